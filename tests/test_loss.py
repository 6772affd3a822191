import math

import numpy as np
import pytest
import torch

from gridface.loss import GridBoxLoss, l1_weight_penalty
from gridface.model import GridBoxNet
from gridface.schedule import soft_start_annealing
from gridface.targets import GridBoxTargetEncoder


def tiny_batch():
    enc = GridBoxTargetEncoder()
    boxes = [np.array([[8.0, 8.0, 40.0, 48.0]]), np.array([[30.0, 10.0, 60.0, 40.0], [0.0, 30.0, 20.0, 60.0]])]
    ts = [enc(b, np.zeros(len(b)), (64, 64)) for b in boxes]
    batch = {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}
    torch.manual_seed(0)
    batch["image"] = torch.rand(2, 3, 64, 64)
    return batch


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    net = GridBoxNet()
    loss_fn = GridBoxLoss()
    batch = tiny_batch()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    first = None
    for _ in range(40):
        out = loss_fn(net(batch["image"]), batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: v.item() for k, v in out.items()}
    assert out["loss"].item() < 0.5 * first["loss"]
    assert out["loss_bbox"].item() < first["loss_bbox"]


def test_terms_and_weights():
    batch = tiny_batch()
    pred = {"cov": batch["cov"].clone(), "bbox": batch["bbox"].clone()}
    out = GridBoxLoss()(pred, batch)
    assert out["loss_bbox"].item() == 0.0
    pred["bbox"] = pred["bbox"] + 1.0
    out = GridBoxLoss()(pred, batch)
    norm_mean = batch["cov_norm"].mean().item()
    assert out["loss_bbox"].item() == pytest.approx(norm_mean, rel=1e-5)
    expected = out["loss_cov"].item() / 11 + 10 * out["loss_bbox"].item() / 11
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_foreground_weight_applies_above_half():
    t = {"cov": torch.tensor([[[[0.9, 0.1]]]]), "cov_norm": torch.zeros(1, 1, 1, 2), "bbox": torch.zeros(1, 4, 1, 2)}
    p = {"cov": torch.full((1, 1, 1, 2), 0.5), "bbox": torch.zeros(1, 4, 1, 2)}
    out = GridBoxLoss(fg_weight=0.05)(p, t)
    assert out["loss_cov"].item() == pytest.approx((0.05 * math.log(2) + 0.95 * math.log(2)) / 2, rel=1e-5)


def test_nan_free_on_saturated_predictions():
    batch = tiny_batch()
    pred = {"cov": torch.zeros_like(batch["cov"]), "bbox": torch.zeros_like(batch["bbox"])}
    out = GridBoxLoss()(pred, batch)
    assert torch.isfinite(out["loss"])


def test_auto_weighting_moves_toward_target_share():
    loss = GridBoxLoss(auto_weight=True, target_cov_share=0.5).train()
    batch = tiny_batch()
    pred = {"cov": torch.full_like(batch["cov"], 0.3), "bbox": batch["bbox"] + 0.01}
    out = loss(pred, batch)
    loss.update_auto_weights()
    w = loss.weights
    share = (w[0] * out["loss_cov"]) / (w[0] * out["loss_cov"] + w[1] * out["loss_bbox"])
    assert share.item() == pytest.approx(0.5, abs=1e-3)
    assert w.min() >= 1e-4 and w.max() <= 0.9999


def test_bad_loss_config():
    with pytest.raises(ValueError, match="fg_weight"):
        GridBoxLoss(fg_weight=1.5)


def test_l1_penalty_scales_with_weights():
    net = GridBoxNet()
    p = l1_weight_penalty(net, 1.0)
    assert p.item() > 0 and l1_weight_penalty(net, 2.0).item() == pytest.approx(2 * p.item(), rel=1e-6)


def test_soft_start_annealing_shape():
    f = lambda p: soft_start_annealing(p, 1e-6, 1e-4, 0.1, 0.7)  # noqa: E731
    assert f(0) == pytest.approx(1e-6) and f(0.1) == pytest.approx(1e-4) and f(0.5) == pytest.approx(1e-4)
    assert f(1.0) == pytest.approx(1e-6) and f(0.05) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        soft_start_annealing(0.5, 1e-4, 1e-6)
