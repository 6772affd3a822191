"""Feature extractors at output stride 16: torchvision's networks plus one small adapter per family.

A backbone is built in three steps, the same for every choice: torchvision's network as published
(``weights=None``), its ImageNet weights loaded from a local file into that unchanged network (so the file's
keys are torchvision's own), then the family's adapter rearranges it to stride 16 and keeps only the
feature layers:

- ResNets (TAO's DetectNet_v2 arrangement): conv1 stride 2, no max-pool, stages with strides 2, 2, 2, 1,
  a projection shortcut on every stage's first block. torchvision's BasicBlock layer1 has none, so one is
  added; its weights are the only ones an ImageNet checkpoint cannot provide.
- MobileNet v2 / v3 and EfficientNet (inverted-residual ``features``): the layers up to the last one at
  stride 16, the stride-32 stages and the classifier dropped. Dropping (rather than replacing the last
  strides by dilation) is what TAO's stride-16 extractors do, and it is cheaper: the widest layers of
  these networks run at stride 32, and dilation would run them on 4x the cells.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from gridface.targets import STRIDE

log = logging.getLogger(__name__)


def resnet_stride16(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """TAO's ResNet at stride 16; module names (``stem``, ``layer1``..``layer4``) as gridface has always used."""
    first, last = net.layer1[0], net.layer4[0]
    strided = (lambda b: b.conv2) if isinstance(first, Bottleneck) else (lambda b: b.conv1)
    strided(first).stride = (2, 2)
    if first.downsample is None:
        out = (first.conv3 if isinstance(first, Bottleneck) else first.conv2).out_channels
        first.downsample = nn.Sequential(nn.Conv2d(first.conv1.in_channels, out, 1, stride=2, bias=False),
                                         nn.BatchNorm2d(out))
    else:
        first.downsample[0].stride = (2, 2)
    strided(last).stride = (1, 1)
    last.downsample[0].stride = (1, 1)
    return OrderedDict(stem=nn.Sequential(net.conv1, net.bn1, net.relu), layer1=net.layer1, layer2=net.layer2,
                       layer3=net.layer3, layer4=net.layer4)


def features_stride16(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """``net.features`` up to its last layer at stride 16 (each block's stride is the product of its
    convolutions' strides: these families have no strided shortcut)."""
    kept: list[nn.Module] = []
    stride = 1
    for block in net.features:
        stride *= math.prod(m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d))
        if stride > STRIDE:
            break
        kept.append(block)
    if stride < STRIDE:
        raise ValueError(f"{type(net).__name__}.features never reaches stride {STRIDE}")
    return OrderedDict(features=nn.Sequential(*kept))


@dataclass(frozen=True)
class BackboneDef:
    build: Callable[[], nn.Module]  # torchvision's network, random weights
    adapt: Callable[[nn.Module], OrderedDict[str, nn.Module]]
    weights: str  # where the ImageNet file comes from, for the missing-file message


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None)


def _weights_hint(name: str) -> str:
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return f"torchvision's {name} ImageNet weights, {url.rsplit('/', 1)[1]} ({url})"


BACKBONES: dict[str, BackboneDef] = {
    # TAO's ResNet10: BasicBlock x1 per stage. torchvision publishes no ImageNet ResNet10.
    "resnet10": BackboneDef(lambda: ResNet(BasicBlock, [1, 1, 1, 1]), resnet_stride16,
                            "a torchvision-format ResNet(BasicBlock, [1, 1, 1, 1]) state dict (torchvision "
                            "publishes no ResNet10 weights; train from scratch with network.pretrained=null)"),
    **{name: BackboneDef(_torchvision(name), resnet_stride16, _weights_hint(name))
       for name in ("resnet18", "resnet34", "resnet50")},
    **{name: BackboneDef(_torchvision(name), features_stride16, _weights_hint(name))
       for name in ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")},
}


def load_imagenet(net: nn.Module, name: str, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict from a local file into the unadapted network ``net``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"network.pretrained = '{path}': ImageNet weights not found. Get "
                                f"{BACKBONES[name].weights} on a machine with internet, copy the file here and set "
                                "network.pretrained=<path>; or set network.pretrained=null to train from scratch "
                                "(gridface never downloads weights at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or non-torch file: say which, in one line
        raise ValueError(f"network.pretrained={path}: not a torch state dict ({type(e).__name__})") from None
    own = net.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"network.pretrained={path}: not a state dict (a {type(state).__name__})")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"network.pretrained={path}: not torchvision's {name} state dict (missing keys "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''} of {len(missing)}, unexpected "
                         f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''} of {len(unexpected)}, other "
                         f"shapes {shapes[:3]}); network.backbone={name} needs {BACKBONES[name].weights}")
    net.load_state_dict(state)


class Backbone(nn.Module):
    """One of :data:`BACKBONES` at output stride 16; ``forward`` returns the last stride-16 feature map.

    ``imagenet_missing`` lists the state-dict keys left at their initialisation when ImageNet weights were
    loaded (the adapter's own layers, e.g. the ResNet layer1 projection)."""

    stride = STRIDE

    def __init__(self, name: str = "resnet18", pretrained: str | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"network.backbone={name!r}: choose one of {sorted(BACKBONES)}")
        self.name = name
        spec = BACKBONES[name]
        net = spec.build()
        if pretrained:
            load_imagenet(net, name, pretrained)
        loaded = {id(t) for t in net.state_dict(keep_vars=True).values()}
        for key, module in spec.adapt(net).items():
            self.add_module(key, module)
        self.imagenet_missing = ([k for k, t in self.state_dict(keep_vars=True).items() if id(t) not in loaded]
                                 if pretrained else [])
        if pretrained:
            log.info("network.pretrained: loaded %d ImageNet tensors from %s (%d left at their init: %s)",
                     len(self.state_dict()) - len(self.imagenet_missing), pretrained, len(self.imagenet_missing),
                     ", ".join(sorted({k.rsplit(".", 1)[0] for k in self.imagenet_missing})) or "none")

    @property
    def out_channels(self) -> int:
        """Channels of the feature map: the last convolution's output (the add ties any shortcut to it)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x
