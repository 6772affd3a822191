"""TAO's soft-start annealing learning-rate schedule: the function and the scheduler the optimizer config names
(``optimizer.scheduler._target_: gridface.schedule.SoftStartAnnealingLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler


def soft_start_annealing(progress: float, min_lr: float, max_lr: float, soft_start: float,
                         annealing: float) -> float:
    """Learning rate at ``progress`` in [0, 1]: exponential ramp min->max over ``[0, soft_start]``,
    flat until ``annealing``, then exponential decay back to min."""
    if not 0.0 <= soft_start <= annealing <= 1.0:
        raise ValueError(f"need 0 <= soft_start <= annealing <= 1, got {soft_start}, {annealing}")
    if min_lr <= 0 or max_lr < min_lr:
        raise ValueError(f"need 0 < min_lr <= max_lr, got {min_lr}, {max_lr}")
    p = min(max(progress, 0.0), 1.0)
    ratio = math.log(max_lr / min_lr)
    if p < soft_start:
        return min_lr * math.exp(ratio * p / soft_start)
    if p < annealing or annealing >= 1.0:
        return max_lr
    return max_lr * math.exp(-ratio * (p - annealing) / (1.0 - annealing))


class SoftStartAnnealingLR(LRScheduler):
    """:func:`soft_start_annealing` over ``total_steps`` optimizer steps (stepped once per step). The peak is each
    parameter group's own learning rate (the optimizer's ``lr``: ``optimizer.max_lr`` in the config); ``min_lr`` is
    where the ramp starts and the decay ends."""

    accepts_lazy_total_steps = True  # GridBoxModule passes a callable: see its configure_optimizers

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int | Callable[[], int], min_lr: float,
                 soft_start: float, annealing: float, last_epoch: int = -1) -> None:
        """``total_steps``: a number, or a callable asked once, at the first step that needs it (step 0 is
        progress 0 whatever the length)."""
        if not callable(total_steps) and int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self._total_steps, self.min_lr = total_steps, float(min_lr)
        self.soft_start, self.annealing = float(soft_start), float(annealing)
        for group in optimizer.param_groups:  # the ranges, checked before the first step changes any lr
            soft_start_annealing(0.0, self.min_lr, group.get("initial_lr", group["lr"]), self.soft_start,
                                 self.annealing)
        super().__init__(optimizer, last_epoch)

    @property
    def total_steps(self) -> int:
        if callable(self._total_steps):
            self._total_steps = int(self._total_steps())
        return self._total_steps

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if callable(state.get("_total_steps")):  # not yet asked: nothing to save but that it is not known
            state["_total_steps"] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own = self._total_steps
        super().load_state_dict(state_dict)
        if self._total_steps is None:
            self._total_steps = own

    def get_lr(self) -> list[float]:
        progress = self.last_epoch / self.total_steps if self.last_epoch else 0.0
        return [soft_start_annealing(progress, self.min_lr, base, self.soft_start, self.annealing)
                for base in self.base_lrs]
