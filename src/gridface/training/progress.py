"""The training progress bar: Lightning's TQDM bar showing the loss without making the GPU wait.

Lightning turns every ``prog_bar=True`` value logged at a step into a Python number at that step, and reading a
CUDA tensor waits for every kernel queued before it: one wait per step, which on an H200 left the GPU idle while
the host launched the next step. Here the step's loss is copied to pinned host memory behind the step, and the bar
shows the newest loss whose copy has finished (usually the previous step's); on the CPU it is the step's own.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar


class LaggedScalar:
    """The newest value of a stream of 0-d tensors that can be read without waiting for the device."""

    def __init__(self) -> None:
        self.value = math.nan
        self._pending: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()

    def push(self, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        if tensor.device.type != "cuda":
            self.value = float(tensor)
            return
        host = torch.empty((), dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((host, done))
        while self._pending and self._pending[0][1].query():
            self.value = float(self._pending.popleft()[0])


class ProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` plus ``loss``: the training loss as :class:`LaggedScalar` reads it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss = LaggedScalar()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss.push(loss)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training and not math.isnan(self._loss.value):
            metrics["loss"] = f"{self._loss.value:.4g}"
        return metrics
