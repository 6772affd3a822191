"""The checkpoint a preempted or timed-out job writes before it goes.

On the pre-timeout or preemption signal (SIGUSR2: Slurm's ``--signal``, ``scancel --signal=USR2``, submitit's),
:class:`PreemptionCheckpoint` saves ``checkpoints/preempted.ckpt`` at the next step boundary and then hands the
signal to submitit, which requeues the job and exits. The requeued job reloads the same pickled config, so it runs
in the same folder, where ``ckpt_path=auto`` (the default, :mod:`gridface.training.resume`) finds the newest
checkpoint and resumes from it, mid-epoch included (the training loader's position is in the checkpoint).

Outside Slurm, SIGTERM (``docker stop``, Kubernetes' eviction, ``kill``, systemd) is handled the same way: the
checkpoint at the next step boundary, then Lightning's own handler, which ends the run (exit 143). Under Slurm,
SIGTERM stays Lightning's and submitit's (it is what ends a cancelled or requeued job; the warning is SIGUSR2).
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

from gridface.training.resume import validation_follows

log = logging.getLogger(__name__)


class PreemptionCheckpoint(pl.Callback):
    """Saves ``preempted.ckpt`` at the first step boundary after SIGUSR2 (at an epoch's last batch, or one validation
    follows, once that validation is done), then calls the handler that was there before (submitit's: requeue on
    rank 0, then exit); in a plain sbatch job rank 0 requeues it with scontrol. Saving at a boundary, not inside the
    signal handler, keeps the optimizer step whole.

    The save is Lightning's public ``trainer.save_checkpoint`` (rank 0 writes through the CheckpointIO plugin,
    atomic here; every rank takes part and meets at a barrier), so under DDP every rank must save at the same
    step: the ranks agree each step whether any of them got the signal (one all-reduce of a flag, beside the one
    Lightning makes for SIGTERM), then all save and hand over together."""

    def __init__(self, dirpath: str, signal_name: str = "USR2", sigterm: bool = True) -> None:
        self.path = Path(dirpath) / "preempted.ckpt"
        self.signum = getattr(signal, f"SIG{signal_name.upper().removeprefix('SIG')}")
        self.sigterm = sigterm  # SIGTERM too, outside Slurm
        self._previous: dict[int, Any] = {}
        self._pending: tuple[int, Any] | None = None
        self._trainer: pl.Trainer | None = None
        self._stepped_to = 0  # the global step at the last batch end: a batch that leaves it is inside an accumulation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Installed once Lightning has registered its own handlers: it notes every handler it finds then and puts
        them back when the run ends, exception or not. Installed earlier (at ``setup``), ours was among them and
        outlived the run: the next run in the process (tune's trials, a notebook) handed over to it, never exiting."""
        if threading.current_thread() is not threading.main_thread():
            return
        signums = [self.signum]
        # SIGTERM in a single process only: under DDP, Lightning's handler signals the other ranks and meets them
        # in a broadcast from inside the handler, which a deferred hand-over would leave waiting
        if self.sigterm and self.signum != signal.SIGTERM and trainer.world_size == 1 and \
                not os.environ.get("SLURM_JOB_ID"):
            signums.append(signal.SIGTERM)
        self._trainer = trainer
        self._stepped_to = trainer.global_step
        for signum in signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._note)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        """Puts back what was there before ours, where ours still is: at a run's end Lightning has already put back
        what it found before the run (its own SIGTERM handler, bound to the finished trainer, was ours' previous:
        restored, it swallowed every later SIGTERM in the process)."""
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._note:
                signal.signal(signum, previous)
        self._previous, self._trainer = {}, None

    def _note(self, signum: int, frame: Any) -> None:
        trainer = self._trainer
        if signum == signal.SIGTERM and trainer is not None and (trainer.validating or trainer.sanity_checking):
            # a validation's end may lie beyond the grace period before SIGKILL (docker: 10 s, Kubernetes: 30 s):
            # Lightning stops it at its next batch, and the run resumes from its newest checkpoint
            self._hand_over(signum, frame)
            return
        self._pending = (signum, frame)

    def _hand_over(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _signalled(self, trainer: pl.Trainer) -> bool:
        """Whether any rank got the signal (every rank calls this at the same points: one all-reduce)."""
        signalled = self._pending is not None
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        return signalled

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped, self._stepped_to = trainer.global_step != self._stepped_to, trainer.global_step
        if self._pending and self._pending[0] == signal.SIGTERM and validation_follows(trainer, batch_idx):
            # no time for the validation (as in _note), also after a batch inside a gradient accumulation (Lightning
            # validates by batch count): the run resumes from its newest checkpoint (single process: no all-reduce)
            signum, frame = self._pending
            self._pending = None
            self._hand_over(signum, frame)
            return
        if not stepped:  # inside a gradient accumulation: its gradient is in no checkpoint
            return
        if self._signalled(trainer) and not validation_follows(trainer, batch_idx):
            self._save_and_hand_over(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A signal at an epoch's last batch: saved here, after the epoch's validation (a whole epoch, as Lightning's
        own epoch-end checkpoints are)."""
        if self._signalled(trainer):
            self._save_and_hand_over(trainer)

    def _save_and_hand_over(self, trainer: pl.Trainer) -> None:
        signum, frame = self._pending or (self.signum, None)  # (another rank got it first)
        self._pending = None
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning("%s received: saved %s at global step %d", signal.Signals(signum).name, self.path,
                        trainer.global_step)
        previous = self._previous.get(signum)
        self._restore()  # a later signal goes to the handler that was there before
        if callable(previous):
            # submitit's (SIGUSR2): requeue (rank 0) and exit, other ranks carry on until stopped; Lightning's
            # (SIGTERM): the run ends at its next check, at once here (SIGTERMException: exit 143)
            previous(signum, frame)
            return
        job = os.environ.get("SLURM_JOB_ID")
        if job and trainer.is_global_zero:  # a plain sbatch job (scripts/slurm/train.sbatch): Slurm requeues it
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.warning("scontrol requeue %s: %s", job, "done" if done.returncode == 0 else done.stderr.strip())
        raise SystemExit(128 + signum)  # what the signal would have done, after the checkpoint
