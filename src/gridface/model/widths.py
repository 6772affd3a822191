"""Per-layer channel widths: how a pruned network is described and rebuilt without torch-pruning.

A pruned checkpoint stores ``{layer name: [in, out]}`` for every convolution (``[in, out, groups]`` for a
grouped one: the depthwise convolutions of MobileNet and EfficientNet) and ``[features]`` for every batch norm
in its hyper-parameters; ``apply_widths`` reshapes a freshly built network to match before
the weights are loaded, so a new process needs neither the pruning run's objects nor torch-pruning.
"""

from __future__ import annotations

from torch import nn


def channel_widths(net: nn.Module) -> dict[str, list[int]]:
    """The widths of every Conv2d (``[in, out]``, ``[in, out, groups]`` when grouped) and BatchNorm2d
    (``[features]``) in ``net``."""
    widths: dict[str, list[int]] = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = [m.in_channels, m.out_channels] + ([m.groups] if m.groups != 1 else [])
        elif isinstance(m, nn.BatchNorm2d):
            widths[name] = [m.num_features]
    return widths


def apply_widths(net: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Replace the layers named in ``widths`` with freshly initialised ones of those widths (in place)."""
    modules = dict(net.named_modules())
    for name, shape in widths.items():
        old = modules.get(name)
        if old is None:
            raise KeyError(f"widths name layer '{name}', which this network does not have")
        if isinstance(old, nn.Conv2d):
            grouped = old.groups != 1
            if len(shape) != 2 + grouped:
                raise ValueError(f"widths['{name}'] must be {'[in, out, groups]' if grouped else '[in, out]'} for "
                                 f"this {'grouped' if grouped else 'ungrouped'} convolution, got {shape}")
            groups = int(shape[2]) if grouped else 1
            if [old.in_channels, old.out_channels, old.groups] == [int(shape[0]), int(shape[1]), groups]:
                continue
            new = nn.Conv2d(int(shape[0]), int(shape[1]), old.kernel_size, old.stride, old.padding, old.dilation,
                            groups=groups, bias=old.bias is not None, padding_mode=old.padding_mode)
        elif isinstance(old, nn.BatchNorm2d):
            if len(shape) != 1:
                raise ValueError(f"widths['{name}'] must be [features] for a batch norm, got {shape}")
            if old.num_features == shape[0]:
                continue
            new = nn.BatchNorm2d(int(shape[0]), old.eps, old.momentum, old.affine, old.track_running_stats)
        else:
            raise ValueError(f"widths['{name}']: {type(old).__name__} layers cannot be resized")
        parent_name, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, attr, new)
    return net
