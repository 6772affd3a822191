"""Finding NaN and infinite values in named tensors: the training guards (``gridface.guards``), validation and the
checkpoint writer (``utils.checkpoint``) share these."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils import get_total_norm


class NonFiniteError(RuntimeError):
    """A loss, gradient, output or weight that is NaN or infinite; the message names where and when."""


def non_finite_names(tensors: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in tensors
            if t is not None and torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the tensors' device, never read here: True when every value of every tensor is finite.

    One fused reduction (torch's foreach L1 norm over all of them: a NaN or an infinity anywhere carries through the
    sum) instead of a check per tensor, which on a GPU is five kernel launches per tensor. A sum of magnitudes beyond
    float32's range (3e38) reads as non-finite too: values that large have diverged anyway."""
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(get_total_norm(tensors, norm_type=1.0))


def check_state_finite(state: Mapping[str, Any], what: str) -> None:
    """Raise :class:`NonFiniteError` if a weight in ``state`` is not finite (checkpoints never carry NaN)."""
    bad = non_finite_names(state.items())
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{what}: non-finite weights in {shown}")
