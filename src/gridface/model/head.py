"""GridBox head: two 1x1 convolutions returning raw maps; loss and decoding live elsewhere."""

from __future__ import annotations

import math

import torch
from torch import nn


class GridBoxHead(nn.Module):
    """``cov_logits``: C channels of coverage logits; ``bbox``: 4C linear channels (DetectNet_v2 blobs).

    The head returns logits, not probabilities, so the loss can use BCE-with-logits (exact under
    fp16/bf16 mixed precision, where a sigmoid saturates to 1.0 and its gradient vanishes). The sigmoid is
    applied by :func:`coverage_probabilities` at inference and inside the exported ONNX graph.
    """

    def __init__(self, in_channels: int, num_classes: int = 1, cov_prior: float = 0.01) -> None:
        super().__init__()
        self.cov = nn.Conv2d(in_channels, num_classes, 1)
        self.bbox = nn.Conv2d(in_channels, 4 * num_classes, 1)
        # A low coverage prior keeps the first steps from flooding the BCE with false positives.
        nn.init.normal_(self.cov.weight, std=0.01)
        nn.init.constant_(self.cov.bias, -math.log((1 - cov_prior) / cov_prior))
        nn.init.normal_(self.bbox.weight, std=0.01)
        nn.init.zeros_(self.bbox.bias)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cov_logits": self.cov(features), "bbox": self.bbox(features)}


def coverage_probabilities(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw head maps -> ``{"cov": sigmoid(cov_logits), "bbox": bbox}``, what post-processing and ONNX take."""
    return {"cov": torch.sigmoid(raw["cov_logits"]), "bbox": raw["bbox"]}
