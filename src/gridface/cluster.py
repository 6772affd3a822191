"""Moved: kept so that configs written before the split still instantiate (a requeued Slurm job reloads its
pickled config, which names ``gridface.cluster.PreemptionCheckpoint``). New code imports from
:mod:`gridface.training.resume`, :mod:`gridface.training.launch` and :mod:`gridface.training.preemption`."""

from gridface.training.launch import check_ddp_launch, cluster_plugins, launched_by_slurm
from gridface.training.preemption import PreemptionCheckpoint
from gridface.training.resume import RESUMABLE, resolve_ckpt_path

__all__ = ["RESUMABLE", "PreemptionCheckpoint", "check_ddp_launch", "cluster_plugins", "launched_by_slurm",
           "resolve_ckpt_path"]
