"""Training end to end through the real Hydra config (small data, few steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from gridface.module import GridBoxModule
from gridface.schedule import SoftStartAnnealingLR, soft_start_annealing
from gridface.train import run

from .helpers import TINY, compose_train, made_beside, take_every_stamp

ROOT = Path(__file__).resolve().parents[1]


def test_fast_dev_run(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer.fast_dev_run=true"])
    result = run(cfg)
    assert "val/AP50" in result["metrics"] and "val/loss" in result["metrics"]



def test_the_optimizer_named_in_the_config_is_the_one_that_trains(tmp_path):
    """optimizer.algorithm is any torch optimizer (here SGD with momentum), built by the module from the config, under
    the soft-start annealing schedule whose values stay optimizer.max_lr, optimizer.min_lr, ..."""
    import pytorch_lightning as pl

    class Seen(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.optimizer = trainer.optimizers[0]
            self.scheduler = trainer.lr_scheduler_configs[0].scheduler

    seen = Seen()
    cfg = compose_train(tmp_path, [*TINY, "trainer.fast_dev_run=true", "optimizer.max_lr=1e-3", "optimizer.min_lr=1e-5",
                                   "optimizer.algorithm._target_=torch.optim.SGD", "+optimizer.algorithm.momentum=0.9"])
    result = run(cfg, callbacks=[seen])
    assert "val/loss" in result["metrics"]
    assert type(seen.optimizer) is torch.optim.SGD and seen.optimizer.defaults["momentum"] == 0.9
    assert seen.optimizer.param_groups[0]["initial_lr"] == 1e-3
    assert type(seen.scheduler) is SoftStartAnnealingLR and seen.scheduler.min_lr == 1e-5


def _attach_trainer(module: GridBoxModule, steps: int) -> None:
    """configure_optimizers reads only the trainer's step count."""
    from types import SimpleNamespace

    module._trainer = SimpleNamespace(estimated_stepping_batches=steps)


def _lr_steps(conf: dict, steps: int) -> list[float]:
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_a_checkpoint_with_the_flat_optimizer_values_loads_and_trains(tmp_path):
    """Checkpoints written before the optimizer became config store ``optimizer`` as five values (no algorithm, no
    scheduler) and ``evaluation`` with every key: they load, and configure_optimizers gives them the Adam and the
    soft-start annealing they trained with."""
    old_optimizer = {"min_lr": 1.0e-5, "max_lr": 2.0e-3, "soft_start": 0.1, "annealing": 0.7, "weight_decay": 0.0}
    old_evaluation = {"iou": 0.5, "interpolation": "11", "coco": False, "wider_gt": None}
    trained = GridBoxModule(input_size=(64, 96))
    # the hyper-parameters of a checkpoint `make train` wrote before (commit 34c272e), at this test's input size
    hp = {"class_names": ["face"], "input_size": [64, 96],
          "model": {"pretrained": None, "cov_prior": 0.01, "init_from": None},
          "loss": {"fg_weight": 0.5, "cov_weight": 1.0, "bbox_weight": 10.0, "auto_weight": False,
                   "target_cov_share": 0.0909, "min_weight": 0.0001, "max_weight": 0.9999, "l1_regularization": 0.0},
          "postprocess": {"clustering": "dbscan", "coverage_threshold": 0.004, "dbscan_eps": 0.3,
                          "dbscan_min_samples": 0.05, "confidence_model": "aggregate_cov", "nms_iou_threshold": 0.3,
                          "confidence_threshold": 0.0, "minimum_bounding_box_height": 4.0},
          "optimizer": old_optimizer, "evaluation": old_evaluation, "data": None, "channels_last": True,
          "compile": False}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": hp, "epoch": 2, "global_step": 750}, path)

    module = GridBoxModule.from_checkpoint(path)
    assert module.hparams["optimizer"] == old_optimizer and module.eval_cfg == old_evaluation
    _attach_trainer(module, 20)
    conf = module.configure_optimizers()
    opt = conf["optimizer"]
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 2e-3 and opt.defaults["weight_decay"] == 0.0
    assert _lr_steps(conf, 20) == pytest.approx([soft_start_annealing(k / 20, 1e-5, 2e-3, 0.1, 0.7)
                                                  for k in range(20)], rel=1e-12)
    # and it trains: one step moves the weights
    before = module.net.head.cov.weight.detach().clone()
    conf = module.configure_optimizers()
    module.net(torch.rand(2, 3, 64, 96))["cov_logits"].sigmoid().mean().backward()
    conf["optimizer"].step()
    assert not torch.equal(before, module.net.head.cov.weight)


def test_a_module_built_without_optimizer_or_evaluation_takes_the_yaml_defaults():
    """GridBoxModule() repeats no default: its optimizer is configs/optimizer/tao.yaml's, its evaluation
    configs/evaluation/default.yaml's; a null scheduler keeps the learning rate at the optimizer's."""
    from omegaconf import OmegaConf

    from gridface.utils.hydra import config_dir

    module = GridBoxModule(input_size=(64, 96))
    assert module.eval_cfg == OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "evaluation" / "default.yaml"))
    _attach_trainer(module, 10)
    conf = module.configure_optimizers()
    tao = OmegaConf.load(Path(config_dir()) / "optimizer" / "tao.yaml")
    assert type(conf["optimizer"]) is torch.optim.Adam and conf["optimizer"].defaults["lr"] == tao.max_lr
    assert _lr_steps(conf, 10) == pytest.approx([soft_start_annealing(k / 10, tao.min_lr, tao.max_lr, tao.soft_start,
                                                                      tao.annealing) for k in range(10)], rel=1e-12)
    constant = GridBoxModule(input_size=(64, 96), optimizer={
        "algorithm": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}, "scheduler": None})
    _attach_trainer(constant, 10)
    opt = constant.configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.01

@pytest.mark.slow
def test_short_training_writes_checkpoints_logs_and_resumes(tmp_path):
    over = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    cfg = compose_train(tmp_path, over)
    result = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert Path(result["best_checkpoint"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents*")) and (out / "csv" / "metrics.csv").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
    # the checkpoint carries its own operating point, the F1-best threshold its validation logged
    best = torch.load(result["best_checkpoint"], weights_only=True)["hyper_parameters"]["postprocess"]
    assert best.get("score_threshold") == (round(result["metrics"]["val/score_threshold"], 6)
                                           if "val/score_threshold" in result["metrics"] else None)
    # Resume from last.ckpt and train one more epoch.
    cfg2 = compose_train(tmp_path, [*over, "trainer.max_epochs=2", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"])
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "out2")
    run(cfg2)
    last = torch.load(tmp_path / "out2" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1 and last["global_step"] == 6
    # The same run again (ckpt_path=auto finds its finished last.ckpt): nothing to train, its metrics still reported
    again = run(compose_train(tmp_path, over))
    assert again["resumed_from"].endswith("last.ckpt") and again["global_step"] == 3
    assert again["metrics"]["val/loss"] == pytest.approx(result["metrics"]["val/loss"], rel=1e-5)


def test_a_resume_that_measures_validation_otherwise_tracks_the_best_checkpoint_afresh(tmp_path, caplog):
    """A resume may change evaluation.iou or the clustering (they never reach the weights), but its val/AP50 is then
    another number: best.ckpt kept the epoch that scored best under the earlier measure. The earlier best is kept
    as best_until_resume.ckpt and the resumed epochs are ranked among themselves; a resume under the same measure
    goes on ranking against the earlier epochs."""
    import logging

    over = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none",
            "checkpoint_every_n_steps=0"]
    first = run(compose_train(tmp_path, [*over, "trainer.max_epochs=1"]))
    ckpts = Path(first["best_checkpoint"]).parent
    with caplog.at_level(logging.WARNING, logger="gridface.training.resume"):
        same = run(compose_train(tmp_path, [*over, "trainer.max_epochs=2"]))
    assert same["resumed_from"].endswith("last.ckpt") and same["global_step"] == 4
    assert "tracked afresh" not in caplog.text and not (ckpts / "best_until_resume.ckpt").exists()
    assert same["best_score"] >= first["best_score"]
    earlier_best = torch.load(same["best_checkpoint"], weights_only=False)["global_step"]
    with caplog.at_level(logging.WARNING, logger="gridface.training.resume"):
        resumed = run(compose_train(tmp_path, [*over, "trainer.max_epochs=3", "evaluation.iou=0.3"]))
    assert resumed["global_step"] == 6
    assert "module.evaluation.iou: 0.5 -> 0.3" in caplog.text and "tracked afresh" in caplog.text
    kept = torch.load(ckpts / "best_until_resume.ckpt", weights_only=False)
    best = torch.load(resumed["best_checkpoint"], weights_only=False)
    assert kept["global_step"] == earlier_best and best["global_step"] == 6  # the one epoch measured at 0.3
    assert resumed["best_score"] == pytest.approx(resumed["metrics"]["val/AP50"])


@pytest.mark.slow
def test_checkpoint_rebuilds_model_in_fresh_process(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                   "trainer.limit_val_batches=1"])
    ckpt = run(cfg)["last_checkpoint"]
    x = torch.rand(1, 3, 160, 256, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    module = GridBoxModule.from_checkpoint(ckpt).eval()
    with torch.no_grad():
        ref = module(x)["bbox"].sum().item()
    code = ("import torch; from gridface.module import GridBoxModule;"
            f"m = GridBoxModule.from_checkpoint({ckpt!r}).eval();"
            f"x = torch.load({str(tmp_path / 'x.pt')!r}); print(m(x)['bbox'].sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(ref, rel=1e-6)


@pytest.mark.slow
def test_two_job_multirun_sweep_in_a_folder_of_its_own(tmp_path):
    """Each job of a sweep gets a folder in the sweep's own folder, also when another sweep took this second's
    name (two sweeps started together shared ``multiruns/<date>_<time>`` and overwrote each other's jobs).
    test_slurm's DDP sweep checks the same through submitit's job processes."""
    env = {**os.environ, "GRIDFACE_ROOT": str(tmp_path)}
    multiruns = tmp_path / "outputs" / "train" / "multiruns"
    taken = take_every_stamp(multiruns)
    cmd = [sys.executable, "-m", "gridface.train", "-m", "seed=1,2", *TINY, "trainer.max_epochs=1",
           "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "logger=none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(made_beside(multiruns, taken).glob("*/result.json"))
    assert [r.parent.name for r in results] == ["0", "1"]
    for r in results:
        assert "val/AP50" in json.loads(r.read_text())["metrics"]
        log = (r.parent / "train.log").read_text()  # Lightning's messages reach the run's log file, not only stderr
        assert "epoch 0: val/AP50=" in log and "training took" in log and "best checkpoint" in log, log[-2000:]


def test_non_finite_loss_stops_the_run_and_never_reaches_a_checkpoint(tmp_path):
    import pytorch_lightning as pl

    from gridface.guards import NonFiniteError
    from gridface.train import build

    class InjectNaN(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:  # the second batch of the second epoch
                with torch.no_grad():
                    pl_module.net.head.cov.weight.fill_(float("nan"))

    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=2",
                                   "trainer.limit_val_batches=1", "logger=none"])
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(InjectNaN())
    with pytest.raises(NonFiniteError, match=r"global step 3 \(epoch 1\): the training loss is nan\. "
                                             r"Last good checkpoint: .*last\.ckpt"):
        trainer.fit(module, datamodule=datamodule)
    last = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_deferred_guard_names_the_first_bad_step_and_no_checkpoint_gets_the_nan(tmp_path):
    """check_every_n_steps > 1 (the GPU recipe's way: no wait for the device per step): the run stops at the next
    check, names the step where the loss first went bad, and no checkpoint holds the NaN weights."""
    import pytorch_lightning as pl

    from gridface.guards import NonFiniteError
    from gridface.train import build

    class InjectNaN(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.net.head.cov.weight.fill_(float("nan"))

    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                                   "trainer.limit_val_batches=1", "logger=none",
                                   "callbacks.non_finite_guard.check_every_n_steps=5"])
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(InjectNaN())
    with pytest.raises(NonFiniteError, match=r"global step 3 \(epoch 1\): the training loss is nan\. "
                                             r"Last good checkpoint: .*last\.ckpt"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 5  # stopped at the first read after the bad step, not at the end
    last = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.parametrize("every", [1, 5])
def test_a_non_finite_gradient_stops_the_run_naming_it(tmp_path, every):
    """The loss is finite, one gradient is not: checked at once (every=1, the parameter named) or recorded on the
    device and read at the next check (every=5, the first bad step named); no checkpoint gets what followed."""
    import pytorch_lightning as pl

    from gridface.guards import NonFiniteError
    from gridface.train import build

    class InjectInf(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 3:
                pl_module.net.head.bbox.weight.grad[0].fill_(float("inf"))

    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                                   "trainer.limit_val_batches=1", "logger=none",
                                   f"callbacks.non_finite_guard.check_every_n_steps={every}"])
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(InjectInf())
    named = r" in net\.head\.bbox\.weight" if every == 1 else ""
    with pytest.raises(NonFiniteError, match=rf"global step 3 \(epoch 1\): non-finite gradients{named}\. "):
        trainer.fit(module, datamodule=datamodule)
    last = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_all_finite_finds_a_nan_or_an_infinity_in_any_tensor():
    from gridface.utils.finite import all_finite

    tensors = [torch.ones(3), torch.zeros(2, 2), torch.full((5,), -2.0, dtype=torch.float64)]
    assert bool(all_finite(tensors)) and bool(all_finite([]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(len(tensors)):
            changed = [t.clone() for t in tensors]
            changed[i].view(-1)[-1] = bad
            assert not bool(all_finite(changed)), (bad, i)


def test_the_module_adds_the_l1_gradient_before_the_optimizer_step():
    """loss.l1_regularization: the step's gradient is the loss's plus strength * sign(w) on every conv/linear kernel
    (what back-propagating TAO's penalty gives), and the logged total includes the penalty's value."""
    from types import SimpleNamespace

    from gridface.loss import l1_kernels

    torch.manual_seed(0)
    module = GridBoxModule(input_size=(64, 96), model={"backbone": "resnet10"}, loss={"l1_regularization": 0.01})
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    x = torch.rand(2, 3, 64, 96)
    out = module.net(x)
    (out["bbox"].square().mean() + out["cov_logits"].mean()).backward()
    plain = [w.grad.clone() for w in l1_kernels(module.net)]
    module.on_before_optimizer_step(torch.optim.SGD(module.parameters(), lr=0.1))
    for w, g in zip(l1_kernels(module.net), plain, strict=True):
        torch.testing.assert_close(w.grad, g + 0.01 * w.detach().sign())
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    with pytest.raises(ValueError, match="unscales its own gradients"):
        module.on_before_optimizer_step(SimpleNamespace(_step_supports_amp_scaling=True))


def test_checkpoint_writer_refuses_non_finite_weights(tmp_path):
    from gridface.guards import NonFiniteError
    from gridface.utils.checkpoint import AtomicCheckpointIO

    state = {"state_dict": {"net.a": torch.ones(2), "net.b": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*x\.ckpt: non-finite weights in net\.b"):
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_a_run_folder_moved_elsewhere_resumes_with_its_best_checkpoint_ranking(tmp_path, caplog):
    """A run copied to another disk and extended there: Lightning restores a ModelCheckpoint's ranking only in the
    folder it was saved in, so the moved run lost its best score, wrote best-v1.ckpt beside a stale best.ckpt, and a
    rerun of a finished one reported best_score null with best_checkpoint in the old folder."""
    import logging
    import shutil

    from .helpers import compose_config

    over = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none",
            "checkpoint_every_n_steps=0"]
    first = run(compose_config("train", tmp_path / "here", tmp_path / "cache", [*over, "trainer.max_epochs=1"]))
    shutil.move(tmp_path / "here", tmp_path / "there")
    with caplog.at_level(logging.INFO, logger="gridface.training.resume"):
        moved = run(compose_config("train", tmp_path / "there", tmp_path / "cache", [*over, "trainer.max_epochs=1"]))
    assert f"the run was moved from {tmp_path / 'here' / 'checkpoints'}" in caplog.text
    assert moved["best_score"] == pytest.approx(first["best_score"])
    assert moved["best_checkpoint"] == str(tmp_path / "there" / "checkpoints" / "best.ckpt")
    extended = run(compose_config("train", tmp_path / "there", tmp_path / "cache", [*over, "trainer.max_epochs=2"]))
    assert extended["global_step"] == 4 and extended["best_score"] >= first["best_score"]
    assert sorted(p.name for p in (tmp_path / "there" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_model_of_another_network_classes_or_widths_names_what_differs(tmp_path):
    """model=<resnet18 .ckpt> with network=resnet10 (or other classes, or a pruned checkpoint's widths on
    another network) was torch's 'Error(s) in loading state_dict' listing hundreds of tensors."""
    from gridface.utils.checkpoint import save_atomically

    def saved(name, classes=("face",), backbone="resnet18", widths=None):
        module = GridBoxModule(class_names=list(classes), input_size=(64, 96), model={"backbone": backbone})
        hp = dict(module.hparams)
        if widths:
            hp["model"] = {**hp["model"], "widths": widths}
        save_atomically({"state_dict": module.state_dict(), "hyper_parameters": hp}, tmp_path / name)
        return tmp_path / name

    r18 = saved("r18.ckpt")
    with pytest.raises(ValueError, match=r"r18.ckpt is a resnet18 network; this run builds resnet10: give "
                                         r"network=resnet18"):
        GridBoxModule(class_names=["face"], input_size=(64, 96), model={"backbone": "resnet10", "init_from": r18})
    with pytest.raises(ValueError, match=r"r18.ckpt detects 1 classes \['face'\], this run trains 2 "
                                         r"\['face', 'mask'\] \(dataset.class_names\)"):
        GridBoxModule(class_names=["face", "mask"], input_size=(64, 96), model={"init_from": r18})
    odd = saved("odd.ckpt", widths={"backbone.nope.0": [3, 8]})
    with pytest.raises(ValueError, match=r"odd.ckpt: its weights do not fit the network this run builds"):
        GridBoxModule(class_names=["face"], input_size=(64, 96), model={"init_from": odd})
    GridBoxModule(class_names=["face"], input_size=(64, 96), model={"init_from": r18})  # the same network: loads


def test_the_same_checkpoint_saved_twice_is_the_same_bytes(tmp_path):
    """torch names a zip's records after the file it writes, and checkpoints went through a random temporary name:
    two saves of the same weights differed, and the pipeline (which tells a changed model by its hash) retrained and
    redid every stage after a prune that had changed nothing."""
    import hashlib

    from gridface.utils.checkpoint import AtomicCheckpointIO, save_atomically

    state = {"state_dict": {"net.a": torch.arange(6.0)}, "hyper_parameters": {"lr": 1e-3}}
    for name in ("a.ckpt", "b.ckpt"):
        save_atomically(state, tmp_path / name)
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "io" / name)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*.ckpt")}
    assert len(digests) == 1 and torch.load(tmp_path / "a.ckpt")["state_dict"]["net.a"].tolist() == list(range(6))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.ckpt", "a.ckpt", "b.ckpt", "b.ckpt", "io"]


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    # Two steps only: without AVX-512 BF16 or AMX, CPU bf16 convolutions run ~20x slower than fp32.
    cfg = compose_train(tmp_path, [*TINY, "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                   "trainer.num_sanity_val_steps=0", "logger=none"])
    result = run(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["val/loss"]))
    ckpt = torch.load(result["last_checkpoint"], weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["net.head.cov.weight"].dtype == torch.float32


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_checkpoint_with_a_foreign_object_is_refused_unless_trusted(tmp_path, monkeypatch, capsys):
    from gridface.utils.checkpoint import TRUST_ENV, load_checkpoint

    path = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(1)}, "hyper_parameters": {"x": _RunsCodeWhenUnpickled()}}, path)
    refused = rf"downloaded\.ckpt: refusing to load it: it holds objects of print.*{TRUST_ENV}=1"
    with pytest.raises(ValueError, match=refused):
        load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out  # refused before anything ran
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_checkpoint(path)["state_dict"]["net.w"].item() == 1.0
    assert "this ran" in capsys.readouterr().out  # trusted deliberately: full unpickling


@pytest.mark.parametrize("damage", ["pickle", "weights", "cut", "text"])
def test_a_damaged_checkpoint_is_named_as_damaged_never_loaded(tmp_path, damage):
    """torch.load reads no checksum: bytes overwritten in the weights loaded silently. The zip's CRCs are checked
    first; a cut or non-zip file says what it is (it used to get the advice to trust it)."""
    from gridface.utils.checkpoint import load_checkpoint

    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"net.w": torch.arange(20000.0)}}, path)
    data = bytearray(path.read_bytes())
    if damage == "pickle":
        at = data.find(b"data.pkl") + 100
        data[at:at + 8] = bytes(8)
    elif damage == "weights":
        data[len(data) // 2:len(data) // 2 + 16] = b"\x07" * 16
    elif damage == "cut":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"epoch=3 step=100\n")
    path.write_bytes(bytes(data))
    message = "not a PyTorch checkpoint" if damage in ("cut", "text") else r"its data is damaged: .* fails its checksum"
    with pytest.raises(ValueError, match=message) as e:
        load_checkpoint(path)
    assert "GRIDFACE_TRUST_CHECKPOINTS" not in str(e.value)



def test_a_run_that_ends_before_any_validation_says_so_and_where_its_weights_are(tmp_path):
    # it printed "final {}; best checkpoint " and exit 0
    from gridface.train import run

    cfg = compose_train(tmp_path, [*TINY, "trainer.max_steps=2", "logger=none"])
    with pytest.warns(UserWarning, match=r"no validation ran .* the final weights are in .*last\.ckpt"):
        result = run(cfg)
    assert result["metrics"] == {} and result["best_checkpoint"] == ""
    assert torch.load(result["last_checkpoint"], weights_only=False)["global_step"] == 2
