"""Stop a run whose numbers went non-finite, before a NaN reaches the weights or a checkpoint.

A NaN loss otherwise trains on silently: the decoder drops non-finite outputs, AP reads 0, and
``last.ckpt`` keeps NaN weights that a resume would carry on from.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from gridface.utils.finite import NonFiniteError, non_finite_names


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    cb = trainer.checkpoint_callback
    path = (getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")) if cb else ""
    return path or "none written yet"


class NonFiniteGuard(pl.Callback):
    """Raise on a non-finite training loss (before backward) or gradient (before the optimizer step).

    Under ``16-mixed`` the gradient scaler owns infinite gradients (it skips the step and lowers its
    scale), so only the loss is checked there.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def _fail(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteError(
            f"training stopped at global step {trainer.global_step} (epoch {trainer.current_epoch}): {what}. "
            f"Last good checkpoint: {last_good_checkpoint(trainer)}. Lower optimizer.max_lr, set "
            "trainer.gradient_clip_val, or check the data (python -m gridface.check_data) before resuming.")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            self._fail(trainer, f"the training loss is {loss.detach().float().item()}")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients or str(trainer.precision).startswith("16"):
            return
        bad = non_finite_names((n, p.grad) for n, p in pl_module.named_parameters())
        if bad:
            self._fail(trainer, f"non-finite gradients in {', '.join(bad[:5])}")
