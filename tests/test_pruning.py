"""Pruning: TAO threshold semantics, group equalisation, head invariance, reload, export, prune -> retrain."""

import copy
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from omegaconf import open_dict
from torch import nn

from gridface.model import GridBoxNet
from gridface.model.widths import apply_widths, channel_widths
from gridface.module import GridBoxModule
from gridface.pruning.collect import collect
from gridface.pruning.importance import TaoImportance
from gridface.pruning.pruner import PruneSpec, count_macs_params, prune_network, threshold_keep_count

from .helpers import compose_config, compose_train

HW = (64, 96)


def test_threshold_keep_count_rounds_up_to_granularity_and_respects_minimum():
    scores = torch.linspace(0.01, 1.0, 64)  # 64 channels, 0.01 ... 1.0
    assert threshold_keep_count(scores, 0.5, 16, 8) == 32  # 32 above 0.5, already a multiple of 8
    assert threshold_keep_count(scores, 0.45, 16, 8) == 40  # 36 above -> rounded up to 40
    assert threshold_keep_count(scores, 0.99, 16, 8) == 16  # 1 above -> the minimum
    assert threshold_keep_count(scores, 0.99, 10, 8) == 16  # minimum 10 -> rounded up to 16
    assert threshold_keep_count(scores, 0.0, 16, 8) == 64
    assert threshold_keep_count(torch.rand(12), 0.9, 16, 8) == 12  # never more than the layer has


class Residual(nn.Module):
    """Two convolutions whose outputs are added: torch-pruning couples their output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.a(x) + self.b(x))


def residual_group():
    net = Residual()
    with torch.no_grad():  # filter L2 norms: a = [1, 2, 4, 8], b = [6, 3, 3, 1.5]
        net.a.weight.zero_()
        net.b.weight.zero_()
        net.a.weight[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 4.0, 8.0])
        net.b.weight[:, 0, 0, 0] = torch.tensor([6.0, 3.0, 3.0, 1.5])
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.rand(1, 3, 4, 4))
    groups = list(graph.get_all_groups(ignored_layers=[net.out], root_module_types=[nn.Conv2d]))
    assert len(groups) == 1, "a and b must form one coupled group"
    return net, groups[0]


@pytest.mark.parametrize("reduction, expected", [
    ("union", [1.0, 0.5, 0.5, 1.0]),
    ("intersection", [0.125, 0.25, 0.5, 0.25]),
    ("mean", [0.5625, 0.375, 0.5, 0.625]),
    ("geomean", [math.sqrt(0.125), math.sqrt(0.125), 0.5, 0.5]),
])
def test_equalisation_rules_on_a_residual_block(reduction, expected):
    # Normalised by each layer's max: a -> [1/8, 1/4, 1/2, 1], b -> [1, 1/2, 1/2, 1/4].
    _, group = residual_group()
    scores = TaoImportance("l2", "max", reduction)(group)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)


def test_threshold_pruning_keeps_the_same_channels_in_coupled_layers():
    net, group = residual_group()
    keep = threshold_keep_count(TaoImportance("l2", "max", "intersection")(group), 0.2, 1, 1)
    assert keep == 3  # channel 0 (min 0.125) is the only one below 0.2
    scores = TaoImportance("l2", "max", "intersection")(group)
    group.prune(idxs=torch.argsort(scores)[: 4 - keep].tolist())
    assert net.a.out_channels == net.b.out_channels == net.out.in_channels == 3
    assert net.a.weight[:, 0, 0, 0].tolist() == [2.0, 4.0, 8.0]  # channel 0 went from both
    assert net.b.weight[:, 0, 0, 0].tolist() == [3.0, 3.0, 1.5]


@pytest.mark.parametrize("spec", [
    PruneSpec(mode="ratio", ratio=0.5),
    PruneSpec(mode="ratio", ratio=0.5, global_pruning=True, criterion="bn_scale"),
    PruneSpec(mode="threshold", threshold=0.99, equalization="mean"),
    PruneSpec(mode="ratio", target_macs=0.3, max_ratio=0.8),
])
def test_head_outputs_unchanged_and_inputs_follow_backbone(spec):
    net = GridBoxNet(num_classes=2).eval()
    for m in net.modules():  # a trained network's BN scales differ; a fresh one's are all 1 (ties)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    before_macs, before_params = count_macs_params(net, HW)
    prune_network(net, spec, HW)
    macs, params = count_macs_params(net, HW)
    assert params < before_params and macs < before_macs
    assert net.head.cov.out_channels == 2 and net.head.bbox.out_channels == 8
    assert net.head.cov.in_channels == net.head.bbox.in_channels == net.backbone.out_channels < 512
    widths = channel_widths(net)
    assert all(w[-1] % 8 == 0 for n, w in widths.items() if not n.startswith("head."))
    if spec.target_macs:
        assert macs <= spec.target_macs * before_macs
    out = net(torch.rand(2, 3, *HW))
    assert out["cov_logits"].shape == (2, 2, 4, 6) and out["bbox"].shape == (2, 8, 4, 6)


def test_threshold_minimum_and_granularity_on_the_network():
    net = GridBoxNet()
    prune_network(net, PruneSpec(mode="threshold", threshold=1.1, min_num_filters=20, granularity=8), HW)
    widths = channel_widths(net)
    # nothing scores above 1.1: every prunable layer keeps the minimum 20, rounded up to 24
    assert {w[1] for n, w in widths.items() if len(w) == 2 and not n.startswith("head.")} == {24}


@pytest.mark.parametrize("global_pruning", [False, True])
def test_a_higher_ratio_never_gives_a_larger_network(global_pruning):
    # torch-pruning rounds a small layer's kept count down to 0 and then leaves the layer whole: ratio 0.9
    # kept the 64-channel stem entirely and gave a network ~10x the MACs of ratio 0.85
    net = GridBoxNet().eval()
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    sizes = []
    for ratio in (0.5, 0.8, 0.85, 0.9, 0.95):
        pruned = prune_network(copy.deepcopy(net), PruneSpec(mode="ratio", ratio=ratio, max_ratio=0.99,
                                                             global_pruning=global_pruning), HW)
        widths = channel_widths(pruned)
        assert all(w[-1] >= 8 for n, w in widths.items() if not n.startswith("head."))
        if ratio >= 0.9:  # every prunable layer loses channels: none is left whole
            assert pruned.backbone.stem[0].out_channels < 64
        sizes.append(count_macs_params(pruned, HW))
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(sizes)), sizes


def test_excluded_layers_keep_their_channels():
    net = GridBoxNet()
    prune_network(net, PruneSpec(mode="ratio", ratio=0.5, exclude=["backbone.layer4.0.conv1"]), HW)
    assert net.backbone.layer4[0].conv1.out_channels == 512 and net.backbone.layer4[1].conv1.out_channels == 256


def test_bad_prune_settings_name_the_key():
    with pytest.raises(ValueError, match="prune.mode"):
        PruneSpec.from_config({"mode": "magic"})
    with pytest.raises(ValueError, match="unknown keys \\['treshold'\\]"):
        PruneSpec.from_config({"mode": "threshold", "treshold": 0.1})
    with pytest.raises(ValueError, match="equalization"):
        PruneSpec.from_config({"equalization": "any"})
    with pytest.raises(ValueError, match="ratio"):
        PruneSpec.from_config({"mode": "ratio", "ratio": 1.5})
    with pytest.raises(ValueError, match="does not have"):
        prune_network(GridBoxNet(), PruneSpec(mode="ratio", exclude=["backbone.nope"]), HW)
    # per-layer pruning: torch-pruning caps nothing at max_ratio there, so a ratio above it is refused, not ignored
    with pytest.raises(ValueError, match=r"prune.max_ratio=0.5: \{'ratio': 0.7\} exceed it"):
        PruneSpec.from_config({"mode": "ratio", "ratio": 0.7, "max_ratio": 0.5})
    PruneSpec.from_config({"mode": "ratio", "ratio": 0.7, "max_ratio": 0.5, "global_pruning": True})
    # wrong types were TypeErrors from inside the comparisons ("'<=' not supported between 'int' and 'str'")
    for key, value, message in [("ratio", "abc", "prune.ratio = 'abc': must be a number"),
                                ("ratio", None, "prune.ratio = None: must be a number"),
                                ("granularity", 2.5, "prune.granularity = 2.5: must be a whole number"),
                                ("target_macs", "half", "prune.target_macs = 'half': must be a number")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            PruneSpec.from_config({"mode": "ratio", key: value})


def test_target_macs_of_one_prunes_nothing():
    """Keeping 100 % of the MACs took the smallest ratio the search tried, and each layer still lost one
    granularity step (64 -> 56 channels)."""
    net = GridBoxNet(num_classes=1).eval()
    before = channel_widths(net)
    prune_network(net, PruneSpec(mode="ratio", target_macs=1.0), HW)
    assert channel_widths(net) == before


@pytest.mark.parametrize(("overrides", "message"), [
    (["retrained=/nonexistent/retrained.ckpt"], "retrained = '/nonexistent/retrained.ckpt': no such file"),
    (["latency.batch=0"], "latency.batch = 0: must be a whole number >= 1"),
    (["latency.reps=-1"], "latency.reps = -1: must be a whole number >= 0"),
    (["batch_size=0"], "batch_size = 0: must be a whole number >= 1"),
])
def test_prune_stage_settings_are_checked_before_any_pruning(tmp_path, untrained_ckpt, overrides, message):
    """A bad key used to surface after the pruned checkpoint was written (and minutes of evaluation)."""
    import re

    from gridface.prune import run

    with pytest.raises(ValueError, match=re.escape(message)):
        run(compose_prune(tmp_path, [f"model={untrained_ckpt}", *overrides]))
    assert not (tmp_path / "prune" / "pruned.ckpt").exists()


def test_taylor_needs_batches_and_uses_them():
    net = GridBoxNet()
    with pytest.raises(ValueError, match="taylor"):
        prune_network(net, PruneSpec(mode="ratio", criterion="taylor"), HW)
    losses = (net(torch.rand(2, 3, *HW))["bbox"].pow(2).mean() for _ in range(2))
    prune_network(net, PruneSpec(mode="ratio", criterion="taylor", ratio=0.25), HW, losses)
    assert net.backbone.layer1[0].conv1.out_channels == 48
    assert all(p.grad is None for p in net.parameters())


def test_widths_rebuild_a_pruned_network():
    net = GridBoxNet().eval()
    prune_network(net, PruneSpec(mode="ratio", ratio=0.5, global_pruning=True), HW)
    fresh = apply_widths(GridBoxNet(), channel_widths(net)).eval()
    fresh.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, *HW)
    torch.testing.assert_close(fresh(x)["bbox"], net(x)["bbox"])
    with pytest.raises(KeyError, match="backbone.nope"):
        apply_widths(GridBoxNet(), {"backbone.nope": [3, 8]})


def compose_prune(tmp_path, overrides):
    return compose_config("prune", tmp_path / "prune", tmp_path / "cache", overrides)


@pytest.fixture(scope="module")
def untrained_ckpt(module_tmp):
    """A checkpoint of an untrained module (shape and I/O tests do not need accuracy)."""
    path = module_tmp("ckpt") / "model.ckpt"
    module = GridBoxModule(input_size=(64, 96), postprocess={"dbscan_eps": 0.3})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_prune_cli_report_and_pruned_checkpoint_reloads_in_fresh_process(tmp_path, untrained_ckpt):
    from gridface.prune import run

    # a checkpoint that does not say what it was trained on: the data is named explicitly
    cfg = compose_prune(tmp_path, [f"model={untrained_ckpt}", "prune=ratio", "prune.ratio=0.5",
                                   "dataset=synthetic", "dataset.val.num_images=4", "dataset.num_workers=0",
                                   "latency.reps=2", "latency.warmup=0", "latency.input_hw=[64,96]"])
    report = run(cfg)
    out = tmp_path / "prune"
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["params_ratio"] == report["params_ratio"] < 0.3
    assert saved["latency"]["before"]["median_ms"] > 0 and "pruned" in saved["ap50"]
    assert {r["layer"]: r["kept"] for r in saved["layers"]}["backbone.layer1.0.conv1"] == 32
    assert "| parameters |" in (out / "prune_report.md").read_text()
    ckpt = out / "pruned.ckpt"
    module = GridBoxModule.from_checkpoint(ckpt).eval()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = module(x)["bbox"]
    code = ("import torch; from gridface.module import GridBoxModule;"
            f"m = GridBoxModule.from_checkpoint({str(ckpt)!r}).eval();"
            f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r}))['bbox'].detach(), {str(tmp_path / 'y.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), ref, rtol=0, atol=0)
    # evaluate and infer load it through their backends / the Detector API.
    from gridface import Detector
    from gridface.inference.backends import load_backend

    cov, bbox = load_backend(ckpt).run(x.numpy())
    np.testing.assert_allclose(bbox, ref.numpy(), atol=1e-5)
    faces = Detector.load(ckpt)(np.zeros((64, 96, 3), dtype=np.uint8))
    assert faces.boxes.shape[1] == 4
    # A model initialised from the pruned checkpoint takes its widths (retraining).
    retrain = GridBoxModule(input_size=(64, 96), model={"init_from": str(ckpt)})
    assert retrain.hparams["model"]["widths"] == module.hparams["model"]["widths"]
    torch.testing.assert_close(retrain.eval()(x)["bbox"], ref)


def test_pruned_checkpoint_exports_to_onnx_matching_pytorch(tmp_path, untrained_ckpt):
    pytest.importorskip("onnxruntime")
    from gridface.export.onnx_export import export_onnx, verify_onnx

    module = GridBoxModule.from_checkpoint(untrained_ckpt).eval()
    prune_network(module.net, PruneSpec(mode="ratio", ratio=0.5), HW)
    path = tmp_path / "pruned.onnx"
    export_onnx(module.net, path, HW, opset=17, exporter="torchscript")
    images = np.random.default_rng(0).random((3, 3, *HW), dtype=np.float32)
    diffs = verify_onnx(path, module.net, images, 1e-3)
    assert diffs["cov"] < 1e-4 and diffs["bbox"] < 1e-3


def test_collect_names_fastest_model_within_budget_and_draws_chart(tmp_path):
    def report(name, ratio, ap, retrained=None):
        d = tmp_path / name
        d.mkdir()
        (d / "prune_report.json").write_text(json.dumps({
            "spec_summary": name, "params_ratio": ratio, "macs_ratio": ratio, "pruned_checkpoint": f"{name}.ckpt",
            "latency": {"before": {"median_ms": 100.0}, "after": {"median_ms": 100 * ratio}, "ratio": ratio},
            "ap50": {"before": 0.90, "pruned": ap, **({"retrained": retrained} if retrained else {})}}))

    report("light", 0.7, 0.899)
    report("medium", 0.4, 0.5, retrained=0.895)
    report("heavy", 0.2, 0.3, retrained=0.85)
    result = collect([tmp_path], 1.0, tmp_path / "sweep")
    assert result["best"]["setting"] == "medium"
    assert (tmp_path / "sweep" / "accuracy_vs_latency.png").stat().st_size > 10_000
    assert "**medium**" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert collect([tmp_path / "heavy"], 1.0, tmp_path / "s2")["best"] is None
    report("facesless", 0.5, None)  # a split without faces: AP is NaN, written as null
    with pytest.raises(ValueError, match="facesless/prune_report.json: its AP is undefined"):
        collect([tmp_path / "facesless"], 1.0, tmp_path / "s3")


@pytest.mark.slow
def test_prune_then_retrain_through_the_callbacks_prunes_as_the_cli_does_and_exports(tmp_path):
    """Train briefly, prune with the CLI, then retrain through the prune + export callbacks in one run: the callback
    prunes to the CLI's widths, the run's checkpoints carry them, and its export matches PyTorch. (That retraining
    recovers the AP pruning cost is a benchmark figure: make pipeline, experiments/pipeline_2026-12-01.)"""
    from gridface.prune import run as prune_run
    from gridface.train import run as train_run

    data = ["dataset.train.num_images=32", "dataset.val.num_images=8", "dataset.num_workers=0",
            "print_config=false", "logger=none", "trainer.max_epochs=1"]
    base = train_run(compose_train(tmp_path / "base", data))["best_checkpoint"]
    # no dataset=: the prune stage evaluates on the data the checkpoint was trained on (8 validation images)
    cfg = compose_prune(tmp_path, [f"model={base}", "prune=ratio", "prune.ratio=0.5", "latency.reps=0"])
    report = prune_run(cfg)
    ap = report["ap50"]
    assert ap["images"] == 8 and "trained on" in ap["data_from"]
    assert 0.0 <= ap["pruned"] <= 1.0 and 0.0 <= ap["before"] <= 1.0

    retrain = compose_train(tmp_path / "retrain", [*data, "experiment=synthetic_cpu_retrain", f"model={base}",
                                                   "callbacks/prune=ratio", "callbacks.prune.spec.ratio=0.5",
                                                   "callbacks/export=onnx", "callbacks.export.export.verify_images=4"])
    with open_dict(retrain):
        retrain.paths.cache_dir = str(tmp_path / "base" / "cache")
    result = train_run(retrain)
    assert 0.0 <= result["metrics"]["val/AP50"] <= 1.0
    # The callback pruned exactly as the CLI did, and the run's checkpoints carry the pruned widths.
    pruned = GridBoxModule.from_checkpoint(report["pruned_checkpoint"])
    retrained = GridBoxModule.from_checkpoint(result["best_checkpoint"])
    assert channel_widths(retrained.net) == channel_widths(pruned.net)
    export_dir = Path(result["best_checkpoint"]).parent.parent / "export"
    export = json.loads((export_dir / "export.json").read_text())
    assert export["onnx_max_abs_diff"]["bbox"] < 1e-3 and (export_dir / "best.onnx").is_file()


def test_prune_callback_prunes_in_setup_and_takes_widths_when_resuming(tmp_path):
    from types import SimpleNamespace

    from gridface.pruning.callback import PruneCallback

    trainer = SimpleNamespace(world_size=1)
    module = GridBoxModule(input_size=(64, 96))
    callback = PruneCallback({"mode": "ratio", "ratio": 0.5})
    callback.setup(trainer, module, "fit")
    widths = module.hparams["model"]["widths"]
    assert widths == channel_widths(module.net) and module.net.backbone.out_channels == 256
    callback.setup(trainer, module, "fit")  # a second setup (e.g. validate after fit) never prunes again
    assert channel_widths(module.net) == widths
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    resumed = GridBoxModule(input_size=(64, 96))
    PruneCallback({"mode": "ratio", "ratio": 0.7}, resume_from=str(ckpt)).setup(trainer, resumed, "fit")
    assert channel_widths(resumed.net) == widths  # the checkpoint's widths, not a new pruning
    resumed.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])


def mark_batchnorms(net: nn.Module) -> None:
    """Distinct BN scales 1 + c/1024 (exact in float32) name each channel; random running statistics."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.weight.copy_(1 + torch.arange(c, dtype=torch.float32) / 1024)
            bn.running_mean.copy_(torch.randn(c, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def assert_bn_statistics_kept(original: nn.Module, pruned: nn.Module) -> None:
    """Every kept channel carries its original running mean and variance, bit for bit."""
    modules = dict(original.named_modules())
    shrunk = 0
    for name, bn in pruned.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            ref = modules[name]
            kept = ((bn.weight.detach() - 1) * 1024).round().long()
            assert torch.equal(bn.weight.detach(), ref.weight.detach()[kept]), name
            assert torch.equal(bn.running_mean, ref.running_mean[kept]), f"{name}: running_mean moved"
            assert torch.equal(bn.running_var, ref.running_var[kept]), f"{name}: running_var moved"
            shrunk += bn.num_features < ref.num_features
    assert shrunk, "nothing was pruned"


@pytest.fixture(scope="module")
def taylor_setup(module_tmp):
    """A module with marked BN layers, its checkpoint, and a loader of 8 synthetic training images (4 batches)."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from gridface.data.config import as_plain, split_samples
    from gridface.data.dataset import DetectionDataset, collate

    root = module_tmp("taylor")
    cfg = compose_train(root, ["dataset.train.num_images=8", "dataset.val.num_images=2"])
    module = GridBoxModule(input_size=HW, data=as_plain(cfg.dataset))
    mark_batchnorms(module.net)
    path = root / "marked.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    train = DetectionDataset(split_samples(as_plain(cfg.dataset), "train"), HW,
                             instantiate(cfg.targets, num_classes=1), None, "train")
    return module, path, DataLoader(train, batch_size=2, collate_fn=collate), cfg


def test_taylor_prune_stage_keeps_batchnorm_statistics(tmp_path, taylor_setup):
    from gridface.prune import run

    module, path, _, train_cfg = taylor_setup
    cfg = compose_prune(tmp_path, [f"model={path}", "prune=ratio", "prune.criterion=taylor", "prune.ratio=0.5",
                                   "batch_size=2", "evaluate=false", "latency.reps=0"])
    with open_dict(cfg):
        cfg.paths.cache_dir = train_cfg.paths.cache_dir
    run(cfg)
    assert_bn_statistics_kept(module.net, GridBoxModule.from_checkpoint(tmp_path / "prune" / "pruned.ckpt").net)


def test_taylor_prune_callback_keeps_batchnorm_statistics(taylor_setup):
    import copy
    from types import SimpleNamespace

    from gridface.pruning.callback import PruneCallback

    module, _, loader, _ = taylor_setup
    pruned = copy.deepcopy(module).train()  # Lightning calls setup with the module in training mode
    trainer = SimpleNamespace(world_size=1, datamodule=SimpleNamespace(train_dataloader=lambda: loader))
    PruneCallback({"mode": "ratio", "criterion": "taylor", "ratio": 0.5}).setup(trainer, pruned, "fit")
    assert pruned.training
    assert_bn_statistics_kept(module.net, pruned.net)


def test_collect_answers_a_wrong_folder_with_one_line(tmp_path, capsys):
    from gridface.pruning.collect import main

    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as stop:
            main([str(bad)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("gridface.pruning.collect: error: ") and "Traceback" not in err
    assert "no prune_report.json under" in err
