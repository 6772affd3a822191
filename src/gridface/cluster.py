"""Training on a cluster: what Slurm, submitit and Lightning need from gridface, and nothing they do themselves.

- Slurm starts one task per device (``hydra/launcher=slurm``); Lightning's ``SLURMEnvironment`` reads the ranks.
  submitit owns requeueing, so Lightning's own auto-requeue is switched off (it would never fire under submitit
  and its log lines would say otherwise).
- On the pre-timeout or preemption signal (SIGUSR2, submitit's), :class:`PreemptionCheckpoint` saves
  ``checkpoints/preempted.ckpt`` at the next step boundary and then hands the signal to submitit, which requeues
  the job and exits. The requeued job reloads the same pickled config, so it runs in the same folder, where
  ``ckpt_path=auto`` (the default) finds the newest checkpoint and resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

RESUMABLE = ("last.ckpt", "step.ckpt", "preempted.ckpt")  # what ckpt_path=auto picks from, newest first


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``auto``: the newest of the run folder's resumable checkpoints, or None for a fresh run. A path is
    checked and returned as given."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path != "auto":
        if not Path(ckpt_path).expanduser().is_file():
            raise FileNotFoundError(f"ckpt_path: checkpoint not found: {ckpt_path}")
        return str(ckpt_path)
    found = [p for p in (Path(output_dir) / "checkpoints" / name for name in RESUMABLE) if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    log.info("resuming from %s (ckpt_path=auto: the newest checkpoint of this run folder)", newest)
    return str(newest)


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


class PreemptionCheckpoint(pl.Callback):
    """Saves ``preempted.ckpt`` at the first step boundary after SIGUSR2, then calls the handler that was there
    before (submitit's: requeue on rank 0, then exit); in a plain sbatch job rank 0 requeues it with scontrol.
    Saving at a boundary, not inside the signal handler, keeps the optimizer step whole.

    The save is Lightning's public ``trainer.save_checkpoint`` (rank 0 writes through the CheckpointIO plugin,
    atomic here; every rank takes part and meets at a barrier), so under DDP every rank must save at the same
    step: the ranks agree each step whether any of them got the signal (one all-reduce of a flag, beside the one
    Lightning makes for SIGTERM), then all save and hand over together."""

    def __init__(self, dirpath: str, signal_name: str = "USR2") -> None:
        self.path = Path(dirpath) / "preempted.ckpt"
        self.signum = getattr(signal, f"SIG{signal_name.upper().removeprefix('SIG')}")
        self._previous: Any = None
        self._pending: tuple[int, Any] | None = None
        self._installed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)
        self._installed = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False

    def _note(self, signum: int, frame: Any) -> None:
        self._pending = (signum, frame)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        signalled = self._pending is not None
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        signum, frame = self._pending or (self.signum, None)  # (another rank got it first)
        self._pending = None
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning("%s received: saved %s at global step %d", signal.Signals(signum).name, self.path,
                        trainer.global_step)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)  # submitit: requeue (rank 0) and exit; other ranks carry on until stopped
            return
        job = os.environ.get("SLURM_JOB_ID")
        if job and trainer.is_global_zero:  # a plain sbatch job (scripts/slurm/train.sbatch): Slurm requeues it
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.warning("scontrol requeue %s: %s", job, "done" if done.returncode == 0 else done.stderr.strip())
        raise SystemExit(128 + signum)  # what the signal would have done, after the checkpoint
