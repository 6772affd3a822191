"""GridBox loss (TAO DetectNet_v2): weighted BCE on coverage + cov_norm-weighted L1 on bbox."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GridBoxLoss(nn.Module):
    """Total = w_cov * L_cov + w_bbox * L_bbox, optionally auto-weighted between epochs.

    ``fg_weight`` weighs the BCE where the coverage target > 0.5 and ``1 - fg_weight`` elsewhere (TAO's
    ``coverage_foreground_weight``). The coverage term is BCE-with-logits, so it stays exact under fp16/bf16
    mixed precision. Cells of an ignore region (``target["ignore"]`` = 1: WIDER invalid or too-small faces,
    KITTI DontCare, COCO crowd) get zero weight in both terms; the means still run over all cells, so an
    ignored box changes no other cell's contribution. Auto-weighting moves each objective's share of the total toward
    its target share at epoch end (``update_auto_weights``), clamped to [min_weight, max_weight].
    """

    def __init__(
        self,
        fg_weight: float = 0.05,
        cov_weight: float = 1.0,
        bbox_weight: float = 10.0,
        auto_weight: bool = False,
        target_cov_share: float | None = None,
        min_weight: float = 1e-4,
        max_weight: float = 0.9999,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if not 0.0 < fg_weight < 1.0:
            raise ValueError(f"loss.fg_weight must be in (0, 1), got {fg_weight}")
        total = cov_weight + bbox_weight
        if cov_weight < 0 or bbox_weight < 0 or total <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {cov_weight}, {bbox_weight}")
        self.fg_weight = fg_weight
        self.auto_weight = auto_weight
        # None: the starting share (TAO's weight targets are its initial weights: 1/11 for cov 1, bbox 10)
        self.target_cov_share = cov_weight / total if target_cov_share is None else float(target_cov_share)
        self.min_weight, self.max_weight, self.eps = min_weight, max_weight, eps
        self.register_buffer("weights", torch.tensor([cov_weight / total, bbox_weight / total]))
        self.register_buffer("_sums", torch.zeros(2), persistent=False)

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t_cov = target["cov"].float()
        w = torch.where(t_cov > 0.5, self.fg_weight, 1.0 - self.fg_weight)
        ignore = target.get("ignore")
        if ignore is not None:
            w = w * (1.0 - ignore.float())
        bce = F.binary_cross_entropy_with_logits(pred["cov_logits"].float(), t_cov, reduction="none")
        loss_cov = (w * bce).mean()
        c = t_cov.shape[1]
        norm = target["cov_norm"].float()
        if ignore is not None:
            norm = norm * (1.0 - ignore.float())
        if c > 1:
            norm = norm.repeat_interleave(4, dim=1)
        l1 = (pred["bbox"].float() - target["bbox"].float()).abs()
        loss_bbox = (norm * l1).mean()
        if self.training and self.auto_weight:
            self._sums += torch.stack([loss_cov.detach(), loss_bbox.detach()])
        total = self.weights[0] * loss_cov + self.weights[1] * loss_bbox
        return {"loss": total, "loss_cov": loss_cov, "loss_bbox": loss_bbox}

    @torch.no_grad()
    def update_auto_weights(self) -> None:
        """Re-balance so the weighted coverage share of the epoch's loss moves to its target share."""
        if not self.auto_weight or self._sums.sum() <= 0:
            return
        cov_sum, bbox_sum = self._sums.clamp_min(self.eps)
        share = torch.tensor([self.target_cov_share, 1 - self.target_cov_share], device=self._sums.device)
        new = share / torch.stack([cov_sum, bbox_sum])
        new = (new / new.sum()).clamp(self.min_weight, self.max_weight)
        self.weights.copy_(new / new.sum())
        self._sums.zero_()


def l1_kernels(model: nn.Module) -> list[torch.Tensor]:
    """The weights TAO's L1 regulariser acts on: conv and linear kernels."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def l1_weight_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """TAO's L1 regulariser on conv/linear kernels, ``strength * sum |w|``: pushes whole filters toward zero so
    pruning finds them. The value only (no graph): its gradient is added by :func:`add_l1_gradient`."""
    # detached: on tensors that require grad, torch's foreach norm falls back to one norm per tensor. Summed in
    # float64: a float32 sum over ResNet18's 11M weights drifts by 2e-4 with the CPU's thread count.
    kernels = [w.detach() for w in l1_kernels(model)]
    if not kernels:
        return torch.zeros(())
    norms = torch._foreach_norm(kernels, 1, dtype=torch.float64)
    return (strength * torch.stack(norms).sum()).float()


@torch.no_grad()
def add_l1_gradient(model: nn.Module, strength: float) -> None:
    """Add the L1 regulariser's gradient, ``strength * sign(w)``, to each trainable kernel's gradient, after backward
    and before the optimizer step (unscaled gradients). The same update as back-propagating the penalty, in two fused
    ops over all kernels instead of about six launches per kernel through autograd (the step's dispatch time on a
    GPU). A kernel the loss did not reach gets the penalty's gradient alone, as under autograd; a step where nothing
    was back-propagated (no gradient anywhere: no optimizer step either) gets none."""
    kernels = [w for w in l1_kernels(model) if w.requires_grad]
    if all(w.grad is None for w in kernels):
        return
    for w in kernels:
        if w.grad is None:
            w.grad = torch.zeros_like(w)
    torch._foreach_add_([w.grad for w in kernels], torch._foreach_sign(kernels), alpha=strength)
