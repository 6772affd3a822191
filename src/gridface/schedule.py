"""TAO's soft-start annealing learning-rate schedule, as a multiplier for ``LambdaLR``."""

from __future__ import annotations

import math


def soft_start_annealing(progress: float, min_lr: float, max_lr: float, soft_start: float = 0.1,
                         annealing: float = 0.7) -> float:
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
