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
from gridface.train import run

from .helpers import TINY, compose_train

ROOT = Path(__file__).resolve().parents[1]


def test_fast_dev_run(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer.fast_dev_run=true"])
    result = run(cfg)
    assert "val/AP50" in result["metrics"] and "val/loss" in result["metrics"]


@pytest.mark.slow
def test_short_training_writes_checkpoints_logs_and_resumes(tmp_path):
    over = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    cfg = compose_train(tmp_path, over)
    result = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert Path(result["best_checkpoint"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents*")) and (out / "csv" / "metrics.csv").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
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
def test_two_job_multirun_sweep(tmp_path):
    env = {**os.environ, "GRIDFACE_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "gridface.train", "-m", "seed=1,2", *TINY, "trainer.max_epochs=1",
           "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "logger=none",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(results) == 2
    for r in results:
        assert "val/AP50" in json.loads(r.read_text())["metrics"]


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


def test_checkpoint_writer_refuses_non_finite_weights(tmp_path):
    from gridface.guards import NonFiniteError
    from gridface.utils.checkpoint import AtomicCheckpointIO

    state = {"state_dict": {"net.a": torch.ones(2), "net.b": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*x\.ckpt: non-finite weights in net\.b"):
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


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
