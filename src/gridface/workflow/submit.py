"""Each pipeline stage as its own cluster job, through the Hydra launcher the training sweeps use.

``python -m gridface.pipeline hydra/launcher=slurm hydra.launcher.partition=gpu ...`` (no ``-m``) submits every
stage that must run as one Slurm job with those resources (training stages with one task per device, as a
training sweep does; the others with one task) and waits for it; ``hydra/launcher=local`` runs each in its own
process. Under ``-m`` the launcher already runs the whole pipeline as one job, so its stages run in that job.
The executor is built the way hydra-submitit-launcher builds it, so every ``hydra.launcher.*`` key means the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gridface.training.launch import slurm_missing, unknown_partition
from gridface.utils.errors import optional_import
from gridface.utils.validate import ConfigError

log = logging.getLogger(__name__)

TRAINING_STAGES = ("train", "retrain")


def launcher_cluster() -> tuple[str, dict[str, Any]] | None:
    """('slurm' | 'local', the launcher's parameters) when this run was started with a submitit launcher and not
    as a sweep; else None (stages run in this process)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    target = str(hc.launcher.get("_target_", ""))
    if hc.mode == RunMode.MULTIRUN or "submitit" not in target:
        return None
    cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
    if cluster == "slurm" and (why := slurm_missing()):  # submitit's own answer is a traceback, after the checks
        raise ConfigError(f"hydra/launcher=slurm: {why}: run the pipeline on a Slurm login node, or without "
                          "hydra/launcher=slurm to run its stages here")
    params = OmegaConf.to_container(hc.launcher, resolve=True)
    params.pop("_target_", None)
    if cluster == "slurm" and (why := unknown_partition(params)):
        raise ConfigError(why)
    return cluster, params


def stage_executor(cluster: str, params: dict[str, Any], folder: Path, stage: str) -> Any:
    """A submitit executor for one stage, its logs under ``<stage folder>/submitit/``."""
    submitit = optional_import("submitit", "running pipeline stages as Slurm jobs (hydra/launcher=slurm)",
                               'pip install -e ".[slurm]"')
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    params.pop("submitit_folder", None)
    params.pop("name", None)  # the job is named after its stage
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    if stage not in TRAINING_STAGES:  # one process: the DDP layout is for training only
        params.update(nodes=1, tasks_per_node=1)
        if params.get("gpus_per_node"):
            params["gpus_per_node"] = 1
    executor = submitit.AutoExecutor(folder=str(folder / "submitit" / "%j"), cluster=cluster, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()
                                  if v is not None and not (cluster == "local" and k not in base)},
                               name=f"gridface-{stage}")
    return executor


def submit_stage(cluster: str, params: dict[str, Any], folder: Path, stage: str, job: Any, *args: Any) -> Any:
    """Run ``job(*args)`` as a cluster job and wait for it; its return value comes back (rank 0's under DDP)."""
    executor = stage_executor(cluster, params, folder, stage)
    submitted = executor.submit(job, *args)
    print(f"pipeline: {stage} submitted as {cluster} job {submitted.job_id} (logs: {folder / 'submitit'})", flush=True)
    return submitted.results()[0]
