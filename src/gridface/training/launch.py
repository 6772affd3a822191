"""How a training run's processes are started: what Slurm and Lightning need from gridface, and nothing they do
themselves.

Slurm starts one task per device (``hydra/launcher=slurm``) and Lightning's ``SLURMEnvironment`` reads the ranks.
submitit owns requeueing, so Lightning's own auto-requeue is switched off (it would never fire under submitit and
its log lines would say otherwise). Locally, Lightning starts the extra DDP ranks itself, which a ``-m`` sweep
cannot survive: :func:`check_ddp_launch` stops that with a message. A sweep submitted to Slurm is checked before
its first job (:class:`LauncherCheck`), where the launcher's own answer would be a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from hydra.experimental.callback import Callback


def cluster_plugins() -> list[Any]:
    """Lightning plugins for the environment the job runs in: under Slurm, ``SLURMEnvironment`` without
    Lightning's auto-requeue (submitit owns it)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if launched_by_slurm() else []


def launched_by_slurm() -> bool:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def check_ddp_launch(trainer_cfg: Any, multirun: bool) -> None:
    """Several DDP processes inside a local ``-m`` sweep: Lightning would re-run the whole command line (the
    sweep) in every extra rank. Under Slurm each rank is a task of its own, so it is fine there."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    several = nodes > 1 or (isinstance(devices, int) and devices > 1) or str(devices) in ("-1", "auto")
    if multirun and several and strategy.startswith("ddp") and "spawn" not in strategy and not launched_by_slurm():
        from gridface.utils.validate import ConfigError

        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={devices} inside a local -m sweep: Lightning would "
            "start every extra rank by re-running the whole sweep. Submit the sweep to Slurm "
            "(hydra/launcher=slurm: one task per device), use trainer.strategy=ddp_spawn, or run the jobs one at "
            "a time without -m")


def slurm_missing() -> str | None:
    """Why Slurm jobs cannot be submitted from here (submitit needs ``srun`` and ``sbatch``), or None."""
    missing = [tool for tool in ("srun", "sbatch") if shutil.which(tool) is None]
    return f"no Slurm on this machine ({' and '.join(missing)} not on PATH)" if missing else None


def launcher_problem(config: Any) -> str | None:
    """What stops a submitit launcher (``hydra/launcher=slurm|local``) of ``config`` before it submits anything:
    no Slurm here, or a ``hydra.launcher`` value that does not resolve (``tasks_per_node: ${trainer.devices}``
    with ``trainer.devices=auto``); None if nothing does, or another launcher runs the jobs."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    launcher = OmegaConf.select(config, "hydra.launcher")
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "submitit" not in target:
        return None
    if target.endswith("SlurmLauncher") and (why := slurm_missing()):
        return (f"hydra/launcher=slurm: {why}: submit from a Slurm login node, or leave hydra/launcher=slurm out to "
                "run the jobs here")
    try:
        params = OmegaConf.to_container(launcher, resolve=True)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", None) or "hydra.launcher")
        reason = str(getattr(e, "msg", e)).splitlines()[0]
        hint = (" The slurm launcher starts one task per device on each node, so trainer.devices and "
                "trainer.num_nodes must be numbers (e.g. trainer.devices=4)."
                if key.endswith(("tasks_per_node", "nodes", "gpus_per_node")) else "")
        return f"{key}: {reason}.{hint}"
    return unknown_partition(params) if target.endswith("SlurmLauncher") else None


def unknown_partition(params: dict[str, Any]) -> str | None:
    """The Slurm launcher's ``partition`` (one, or sbatch's comma-separated list) where Slurm does not know it, named
    with those it does; None when it knows them all or ``sinfo`` cannot say. sbatch's own answer came as the last
    line of submitit's traceback, from inside the launcher."""
    partition = params.get("partition")
    if not partition or set(params.get("additional_parameters") or {}) & {"clusters", "M"}:
        return None  # (another cluster of a federation: this machine's sinfo does not list its partitions)
    try:  # --all: hidden partitions too; %R: the name alone (%P marks the default with '*')
        listed = subprocess.run(["sinfo", "--all", "--noheader", "--format=%R"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    known = sorted({line.strip() for line in listed.stdout.splitlines() if line.strip()})
    if listed.returncode != 0 or not known:
        return None
    missing = [p.strip() for p in str(partition).split(",") if p.strip() and p.strip() not in known]
    if not missing:
        return None
    return (f"hydra.launcher.partition={partition}: Slurm has no partition {', '.join(missing)} (sinfo lists "
            f"{', '.join(known)})")


class LauncherCheck(Callback):
    """Hydra callback (``configs/hydra/default.yaml``): a sweep whose submitit launcher cannot submit is one line
    (:func:`launcher_problem`) before any job, not submitit's or OmegaConf's traceback from inside the launcher."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from gridface.utils.errors import full_error, report

        why = None if full_error() else launcher_problem(config)
        if why:
            report(OmegaConf.select(config, "task_name", default=None) or "run", why)
