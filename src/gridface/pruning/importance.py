"""TAO-style channel importance for torch-pruning groups.

TAO scores every convolution's output filters on their own (norm of the kernel), normalises each layer's
scores (by the layer's max, or its L2 norm), and only then combines the layers a residual add couples:
``union`` keeps a channel if any layer needs it (max), ``intersection`` only if all do (min), or the
arithmetic / geometric mean. torch-pruning's own importances reduce first and normalise after, and have
no min or geometric mean, hence this class. The per-layer score is one of:

- ``l1`` / ``l2``: norm of the filter's kernel (TAO: ``l2``);
- ``bn_scale``: |gamma| of the batch norm after the convolution (network slimming);
- ``taylor``: |sum of weight * gradient| over the filter, from gradients accumulated beforehand.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

CRITERIA = ("l1", "l2", "bn_scale", "taylor")
NORMALIZERS = ("max", "l2", None)
EQUALIZATIONS = ("union", "intersection", "mean", "geomean")


class TaoImportance(tp.importance.Importance):
    """Per-layer score, normalised per layer, reduced across the group: one score per root channel."""

    def __init__(self, criterion: str = "l2", normalizer: str | None = "max", equalization: str = "union") -> None:
        for key, value, allowed in (("criterion", criterion, CRITERIA), ("normalizer", normalizer, NORMALIZERS),
                                    ("equalization", equalization, EQUALIZATIONS)):
            if value not in allowed:
                raise ValueError(f"prune.{key}={value!r}; choose one of {allowed}")
        self.criterion, self.normalizer, self.equalization = criterion, normalizer, equalization

    def layer_scores(self, layer: nn.Module, idxs: list[int]) -> torch.Tensor | None:
        """Scores of ``layer``'s output channels ``idxs``; None when this layer does not score."""
        if self.criterion == "bn_scale":
            return layer.weight.detach()[idxs].abs() if isinstance(layer, nn.BatchNorm2d) and layer.affine else None
        if not isinstance(layer, nn.Conv2d):
            return None
        w = layer.weight.detach()[idxs].flatten(1)
        if self.criterion == "taylor":
            if layer.weight.grad is None:
                raise RuntimeError("taylor importance needs gradients: run backward on a few batches first")
            return (w * layer.weight.grad[idxs].flatten(1)).sum(1).abs()
        return torch.linalg.vector_norm(w, ord=1 if self.criterion == "l1" else 2, dim=1)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        if self.normalizer is None:
            return scores
        denom = scores.max() if self.normalizer == "max" else scores.norm()
        return scores / denom.clamp_min(1e-12)

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        per_layer: list[torch.Tensor] = []
        n = len(group[0].idxs)
        for i, (dep, idxs) in enumerate(group):
            root_idxs = group[i].root_idxs
            if dep.pruning_fn not in (tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels) or any(
                    r is None for r in root_idxs):
                continue
            scores = self.layer_scores(dep.layer, idxs)
            if scores is None:
                continue
            full = torch.full((n,), float("nan"))
            full[torch.as_tensor(root_idxs)] = self.normalize(scores.float().cpu())
            per_layer.append(full)
        if not per_layer:
            return None
        stacked = torch.stack(per_layer)
        if self.equalization == "union":
            return stacked.nan_to_num(float("-inf")).amax(0)
        if self.equalization == "intersection":
            return stacked.nan_to_num(float("inf")).amin(0)
        if self.equalization == "mean":
            return stacked.nanmean(0)
        return stacked.clamp_min(1e-12).log().nanmean(0).exp()
