"""The GPU recipe on a real GPU: mixed precision, channels_last, the inference backend on CUDA, NCCL DDP and the
smoke pipeline. Skipped with a reason where no CUDA device is visible (``make test-gpu`` runs them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import TINY, compose_train, run_smoke_pipeline

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_steps_on_a_fixed_batch_lower_the_loss(dtype):
    """A fixed batch, no augmentation, constant learning rate: 30 steps in autocast with the model and batch in
    channels_last drive the loss below half its start, every step finite. The fp32 CPU analogue of these 30 steps
    (tests.helpers.overfit_fixed_batch on the same batch) ended at 0.27-0.32 of its start over seeds 0-9; on the H200
    this test passed once, at seed 0 (experiments/gpu_2026-12-04)."""
    from gridface.loss import GridBoxLoss
    from gridface.model import GridBoxNet

    from .test_loss import tiny_batch

    torch.manual_seed(0)
    batch = {k: v.cuda() for k, v in tiny_batch().items()}
    image = batch["image"].contiguous(memory_format=torch.channels_last)
    net = GridBoxNet().cuda().to(memory_format=torch.channels_last)
    loss_fn = GridBoxLoss()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=dtype):
            out = loss_fn(net(image), batch)
        opt.zero_grad()
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all() and out["loss"].dtype == torch.float32  # the loss itself stays fp32
    assert losses[-1] < 0.5 * losses[0], losses


def test_gpu_recipe_trains_in_bf16_channels_last_and_writes_plain_fp32_checkpoints(tmp_path):
    from gridface.train import build, run

    over = [*TINY, "trainer=gpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "logger=none"]
    cfg = compose_train(tmp_path, over)
    _, _, trainer = build(compose_train(tmp_path / "probe", over))
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    assert trainer.precision == expected
    result = run(cfg)
    assert result["global_step"] == 3 and np.isfinite(result["metrics"]["val/loss"])
    state = torch.load(result["last_checkpoint"], weights_only=False, map_location="cpu")["state_dict"]
    conv = state["net.head.cov.weight"]
    assert conv.dtype == torch.float32 and all(v.is_contiguous() for v in state.values())


@pytest.mark.parametrize("prefetch", ["stream", "thread"])
def test_gpu_recipe_trains_through_the_device_data_path(tmp_path, monkeypatch, prefetch):
    """dataset.decode=gpu under the GPU recipe: nvJPEG batches built on the side stream, from the loop's thread or
    the build thread (whose pending batches Lightning hands to the datamodule), train and validate."""
    from gridface.data.prefetch import DevicePrefetchLoader
    from gridface.train import run

    iterated, real_iter = [], DevicePrefetchLoader.__iter__
    monkeypatch.setattr(DevicePrefetchLoader, "__iter__", lambda self: iterated.append(self) or real_iter(self))
    result = run(compose_train(tmp_path, [*TINY, "trainer=gpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                                          "trainer.limit_val_batches=1", "logger=none", "dataset.decode=gpu",
                                          f"dataset.prefetch={prefetch}"]))
    assert result["global_step"] == 3 and np.isfinite(result["metrics"]["val/loss"])
    assert iterated and all(wrapper.threaded == (prefetch == "thread") for wrapper in iterated)


def test_detector_on_cuda_equals_the_cpu(tmp_path):
    from gridface.inference.detector import Detector
    from gridface.module import GridBoxModule

    torch.manual_seed(0)
    module = GridBoxModule(input_size=(128, 192))
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    images = [np.random.default_rng(i).integers(0, 255, (150 + 20 * i, 230, 3), np.uint8) for i in range(3)]
    cpu, gpu = Detector.load(ckpt, device="cpu"), Detector.load(ckpt, device="cuda")
    prepared = [cpu.prepare(img)[0] for img in images]
    (cov_c, box_c), (cov_g, box_g) = cpu.run(prepared), gpu.run(prepared)
    assert np.abs(cov_c - cov_g).max() < 1e-3 and np.abs(box_c - box_g).max() < 1e-3
    for a, b in zip(cpu(images), gpu(images), strict=True):
        assert len(a.boxes) == len(b.boxes)


def test_one_gpu_nccl_ddp_run(tmp_path):
    env = {**os.environ, "GRIDFACE_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "gridface.train", *TINY, "trainer=ddp", "trainer.devices=1",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none",
           f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["global_step"] == 2 and "val/AP50" in result["metrics"]


@pytest.mark.slow
def test_smoke_pipeline_on_the_gpu(tmp_path):
    stdout, _ = run_smoke_pipeline(tmp_path, "trainer=gpu")
    assert "report" in stdout
