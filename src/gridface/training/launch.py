"""How a training run's processes are started: what Slurm and Lightning need from gridface, and nothing they do
themselves.

Slurm starts one task per device (``hydra/launcher=slurm``) and Lightning's ``SLURMEnvironment`` reads the ranks.
submitit owns requeueing, so Lightning's own auto-requeue is switched off (it would never fire under submitit and
its log lines would say otherwise). Locally, Lightning starts the extra DDP ranks itself, which a ``-m`` sweep
cannot survive: :func:`check_ddp_launch` stops that with a message.
"""

from __future__ import annotations

from typing import Any


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
