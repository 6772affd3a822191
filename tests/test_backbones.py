"""Every backbone through the stages that depend on its shape: stride-16 forward, pruning on torch-pruning's
dependency graph (residual adds, depthwise convolutions, squeeze-and-excitation), ONNX parity with PyTorch and
the pruned checkpoint's reload. Small inputs (64x96) keep each backbone to about a second."""

import numpy as np
import pytest
import torch
from torch import nn

from gridface.export.onnx_export import export_onnx, verify_onnx
from gridface.model import BACKBONES, GridBoxNet
from gridface.module import GridBoxModule
from gridface.pruning.pruner import PruneSpec, count_macs_params, prune_module, prune_network

HW = (64, 96)
NAMES = sorted(BACKBONES)


def calibrate_batchnorm(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics from one batch, so activations have a realistic scale (torchvision's init leaves
    MobileNet outputs near 1e-8, where any export would look exact)."""
    momenta = {m: m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    for m in momenta:
        m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    return net.eval()


@pytest.fixture(scope="module", params=NAMES)
def pruned(request):
    """A module of each backbone, its batch norms calibrated, before and after one ratio-0.5 pruning round."""
    torch.manual_seed(0)
    module = GridBoxModule(input_size=HW, model={"backbone": request.param})
    x = torch.rand(2, 3, *HW, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(module.net, x)
    before = count_macs_params(module.net, HW)
    prune_module(module, PruneSpec(mode="ratio", ratio=0.5))
    return {"name": request.param, "module": module.eval(), "before": before, "x": x}


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_stride_16(name):
    net = GridBoxNet(num_classes=2, backbone=name).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 96, 160))
    assert out["cov_logits"].shape == (1, 2, 6, 10) and out["bbox"].shape == (1, 8, 6, 10)
    assert net.head.cov.in_channels == net.backbone.out_channels


def test_pruning_round_keeps_forward_valid_and_shrinks_macs(pruned):
    net = pruned["module"].net
    macs, params = count_macs_params(net, HW)
    assert macs < 0.4 * pruned["before"][0] and params < 0.4 * pruned["before"][1]
    with torch.no_grad():
        out = net(pruned["x"])
    assert out["cov_logits"].shape == (2, 1, 4, 6) and out["bbox"].shape == (2, 4, 4, 6)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert net.head.cov.out_channels == 1 and net.head.bbox.out_channels == 4
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1):  # depthwise stays depthwise
        assert conv.groups == conv.in_channels == conv.out_channels


def test_pruned_export_matches_pytorch(pruned, tmp_path):
    pytest.importorskip("onnxruntime")
    net = pruned["module"].net
    path = export_onnx(net, tmp_path / "pruned.onnx", HW, opset=17, exporter="torchscript")
    images = np.random.default_rng(0).random((2, 3, *HW), dtype=np.float32)
    with torch.no_grad():
        scale = float(net.predict(torch.from_numpy(images))["bbox"].abs().max())
    assert scale > 1e-3  # a check on real-sized outputs, not on zeros
    diffs = verify_onnx(path, net, images, atol=1e-4)
    assert max(diffs.values()) < 1e-4


def test_pruned_checkpoint_reloads_with_its_widths(pruned, tmp_path):
    module = pruned["module"]
    path = tmp_path / "pruned.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    reloaded = GridBoxModule.from_checkpoint(path).eval()
    assert reloaded.net.backbone.name == pruned["name"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pruned["x"])["bbox"], module(pruned["x"])["bbox"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b0"])
def test_threshold_pruning_removes_weak_channels_through_squeeze_excitation_consistently(name):
    """Half the channels of one inverted-residual block (expand, depthwise and SE output) and half its SE
    squeeze channels made weak: threshold pruning removes them, and the dependency graph keeps the expand,
    depthwise, SE and projection convolutions agreeing."""
    torch.manual_seed(0)
    net = GridBoxNet(backbone=name).eval()
    blocks = [m for m in net.modules() if hasattr(m, "block") and any(n.endswith("fc1") for n, _ in m.named_modules())]
    block = blocks[-1].block  # expand, depthwise, squeeze-excitation, project (the widest SE: 28+ squeeze channels)
    expand, dw, se, project = block[0][0], block[1][0], block[2], block[3][0]
    wide, squeeze = dw.out_channels, se.fc1.out_channels
    with torch.no_grad():
        for w in (expand.weight, dw.weight, se.fc2.weight):
            w[::2] *= 1e-3
        se.fc1.weight[::2] *= 1e-3
    prune_network(net, PruneSpec(mode="threshold", threshold=0.1, min_num_filters=8, granularity=8), HW)
    assert expand.out_channels == dw.out_channels == dw.groups == se.fc2.out_channels == project.in_channels
    assert dw.out_channels == max(8, -(-(wide // 2) // 8) * 8) < wide
    assert se.fc1.out_channels == se.fc2.in_channels == max(8, -(-(squeeze // 2) // 8) * 8) < squeeze
    with torch.no_grad():
        assert net(torch.rand(1, 3, *HW))["bbox"].shape == (1, 4, 4, 6)
