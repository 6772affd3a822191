"""Stop a run whose numbers went non-finite, before a NaN reaches a checkpoint.

A NaN loss otherwise trains on silently: the decoder drops non-finite outputs, AP reads 0, and
``last.ckpt`` keeps NaN weights that a resume would carry on from.

Asking the device whether a value is finite makes the host wait for it. On the CPU that costs nothing, so by
default (``check_every_n_steps: 1``) the loss is checked before backward and the gradients before the optimizer
step, and a NaN never reaches the weights. On a GPU each such wait drains the queue of launched kernels, and two
per step (sixty-odd with one per gradient) kept an H200 idle for a third of every step; there the checks are
recorded on the device (the first bad step and what went bad, no wait) and read every ``check_every_n_steps``
steps, at each epoch end and before any checkpoint is written. The run then stops within that many steps, names
the first bad step, and no checkpoint ever holds the NaN weights (:mod:`gridface.utils.checkpoint` refuses them too).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from gridface.training.resume import last_checkpoint_path
from gridface.utils.finite import NonFiniteError, all_finite, non_finite_names

LOSS, GRADIENT = 1, 2


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    cb = trainer.checkpoint_callback
    return last_checkpoint_path(trainer) or getattr(cb, "best_model_path", "") or "none written yet"


class NonFiniteGuard(pl.Callback):
    """Raise on a non-finite training loss or gradient, naming the step, what went bad and the last good checkpoint.

    Under ``16-mixed`` the gradient scaler owns infinite gradients (it skips the step and lowers its scale), so only
    the loss is checked there. ``check_every_n_steps`` > 1: checks recorded on the device, read that often (above).
    """

    def __init__(self, check_gradients: bool = True, check_every_n_steps: int = 1) -> None:
        if int(check_every_n_steps) < 1:
            raise ValueError(f"callbacks.non_finite_guard.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_gradients = check_gradients
        self.every = int(check_every_n_steps)
        self._first: torch.Tensor | None = None  # [step, what, epoch] of the first bad step, -1 while none
        self._loss: torch.Tensor | None = None  # the first bad loss value

    def _fail(self, trainer: pl.Trainer, what: str, step: int | None = None, epoch: int | None = None) -> None:
        step = trainer.global_step if step is None else step
        epoch = trainer.current_epoch if epoch is None else epoch
        raise NonFiniteError(
            f"training stopped at global step {step} (epoch {epoch}): {what}. "
            f"Last good checkpoint: {last_good_checkpoint(trainer)}. Lower optimizer.max_lr, set "
            "trainer.gradient_clip_val, or check the data (python -m gridface.check_data) before resuming.")

    # ------------------------------------------------------------------------------- recording without a wait
    def _record(self, trainer: pl.Trainer, bad: torch.Tensor, what: int, loss: torch.Tensor | None = None) -> None:
        """Keep the first bad step on the device: ``bad`` is a 0-d bool tensor, never read here."""
        if self._first is None or self._first.device != bad.device:
            self._first = torch.full((3,), -1, dtype=torch.long, device=bad.device)
            self._loss = torch.zeros((), dtype=torch.float32, device=bad.device)
        new = bad & (self._first[0] < 0)
        here = torch.empty_like(self._first)  # filled by kernels: torch.tensor([...], device=) would wait for the GPU
        for i, value in enumerate((trainer.global_step, what, trainer.current_epoch)):
            here[i] = value
        self._first.copy_(torch.where(new, here, self._first))
        if loss is not None:
            self._loss.copy_(torch.where(new, loss.detach().float(), self._loss))

    def check(self, trainer: pl.Trainer) -> None:
        """Read what was recorded (one wait for the device) and raise if a step went bad."""
        if self._first is None:
            return
        step, what, epoch = (int(v) for v in self._first.tolist())
        if step < 0:
            return
        if what == LOSS:
            self._fail(trainer, f"the training loss is {float(self._loss)}", step, epoch)
        self._fail(trainer, "non-finite gradients", step, epoch)

    # ----------------------------------------------------------------------------------------------- hooks
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.every == 1:
            if not torch.isfinite(loss).all():
                self._fail(trainer, f"the training loss is {loss.detach().float().item()}")
            return
        self._record(trainer, ~torch.isfinite(loss.detach()).all(), LOSS, loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients or str(trainer.precision).startswith("16"):
            return
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        finite = all_finite([g for _, g in named])  # one fused reduction; the names are looked up only on a failure
        if self.every == 1:
            if not finite:
                self._fail(trainer, f"non-finite gradients in {', '.join(non_finite_names(named)[:5])}")
            return
        self._record(trainer, ~finite, GRADIENT)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every > 1 and trainer.global_step % self.every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.check(trainer)
