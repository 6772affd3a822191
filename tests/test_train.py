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
    cfg = compose_train(tmp_path, [*TINY, "+trainer.fast_dev_run=true"])
    result = run(cfg)
    assert "val/AP50" in result["metrics"] and "val/loss" in result["metrics"]


@pytest.mark.slow
def test_short_training_writes_checkpoints_logs_and_resumes(tmp_path):
    over = [*TINY, "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2"]
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


@pytest.mark.slow
def test_checkpoint_rebuilds_model_in_fresh_process(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                                   "+trainer.limit_val_batches=1"])
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
           "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "logger=none",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(results) == 2
    for r in results:
        assert "val/AP50" in json.loads(r.read_text())["metrics"]
