"""GridBoxNet: backbone + head, built from plain arguments so a checkpoint can rebuild it alone."""

from __future__ import annotations

import torch
from torch import nn

from gridface.model.backbone import Backbone
from gridface.model.head import GridBoxHead, coverage_probabilities
from gridface.model.widths import apply_widths


class GridBoxNet(nn.Module):
    """Input RGB NCHW float in [0, 1]; ``forward`` returns the raw maps
    ``{"cov_logits": [N,C,H/16,W/16], "bbox": [N,4C,H/16,W/16]}``; ``predict`` the coverage probabilities."""

    def __init__(self, num_classes: int = 1, pretrained: str | None = None, cov_prior: float = 0.01,
                 widths: dict[str, list[int]] | None = None, backbone: str = "resnet18") -> None:
        """``backbone``: a name of ``model.backbone.BACKBONES`` (the default is for checkpoints written before
        there was a choice; configs always name it); ``widths``: per-layer channel widths of a pruned network
        (see ``model.widths``), None for the backbone's own."""
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone(backbone, pretrained=pretrained)
        self.head = GridBoxHead(self.backbone.out_channels, num_classes, cov_prior)
        if widths:
            apply_widths(self, widths)

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # Grayscale: replicate to the 3 channels the network expects (exports are traced with 3).
        if not torch.onnx.is_in_onnx_export() and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.head(self.backbone(images))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"cov": probabilities, "bbox": ...}``: the maps post-processing and the ONNX graph carry."""
        return coverage_probabilities(self(images))
