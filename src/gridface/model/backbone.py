"""torchvision ResNet18 rearranged to TAO's output stride 16.

TAO's DetectNet_v2 ResNet18: conv1 stride 2, no max-pool, stages with strides 2, 2, 2, 1 and a
projection shortcut on every stage's first block. torchvision's layer1 has no projection, so one is
added; its weights are the only ones an ImageNet checkpoint cannot provide.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_HINT = (
    "Download torchvision's ImageNet ResNet18 weights (resnet18-f37072fd.pth, "
    "https://download.pytorch.org/models/resnet18-f37072fd.pth) on a machine with internet, copy the file "
    "here, and set network.pretrained=<path>; or leave network.pretrained=null to train from scratch. gridface "
    "never downloads weights at run time."
)


class ResNet18Stride16(nn.Module):
    """Feature extractor returning the stride-16 map of the last stage (``out_channels`` wide)."""

    stride = 16

    def __init__(self, pretrained: str | None = None) -> None:
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        net.maxpool = nn.Identity()
        first = net.layer1[0]
        first.conv1.stride = (2, 2)
        first.downsample = nn.Sequential(nn.Conv2d(64, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
        last = net.layer4[0]
        last.conv1.stride = (1, 1)
        last.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if pretrained:
            self.load_imagenet(pretrained)

    @property
    def out_channels(self) -> int:
        return self.layer4[-1].bn2.num_features

    def load_imagenet(self, path: str | Path) -> list[str]:
        """Load torchvision ImageNet weights from a local file; returns the keys left at their init."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"network.pretrained = '{path}': ImageNet weights not found. {IMAGENET_HINT}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        renamed = {
            (f"stem.{ {'conv1': 0, 'bn1': 1}[k.split('.')[0]] }.{k.split('.', 1)[1]}"
             if k.split(".")[0] in ("conv1", "bn1") else k): v
            for k, v in state.items()
            if not k.startswith("fc.")
        }
        result = self.load_state_dict(renamed, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{path}: not a torchvision ResNet18 state dict "
                             f"(unexpected keys {result.unexpected_keys[:5]})")
        loaded = len(renamed) - len(result.unexpected_keys)
        log.info("network.pretrained: loaded %d ImageNet tensors from %s (%d left at their init: %s)", loaded, path,
                 len(result.missing_keys), ", ".join(sorted({k.rsplit(".", 1)[0] for k in result.missing_keys})))
        return list(result.missing_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
