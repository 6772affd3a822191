"""Precision and device choices made at start-up, and the GPU recipe on a machine without a GPU."""

import pytest
import torch
from omegaconf import OmegaConf

from gridface.accelerator import auto_precision, check_gpu_available, resolve_precision
from gridface.utils.validate import ConfigError

from .helpers import TINY, compose_train


def test_auto_precision_is_bf16_where_the_gpu_has_it_else_fp16_and_fp32_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_precision("gpu") == "16-mixed"
    assert auto_precision("cpu") == "32-true"
    assert resolve_precision(OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"})) == "bf16-mixed"


def test_gpu_recipe_without_a_gpu_says_how_to_train_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trains on a GPU and no CUDA GPU is visible here.*add trainer=cpu"):
        check_gpu_available("gpu")
    check_gpu_available("cpu")
    from gridface.train import run

    # the real-data recipe (trainer=gpu) on this machine: the dataset's own problem is named first ...
    with pytest.raises(ConfigError, match=r"dataset.root = '.*nowhere' does not exist"):
        run(compose_train(tmp_path, ["dataset=widerface", f"dataset.root={tmp_path / 'nowhere'}"]))
    # ... then the missing GPU, before Lightning's MisconfigurationException
    with pytest.raises(ConfigError, match=r"add trainer=cpu"):
        run(compose_train(tmp_path, [*TINY, "trainer=gpu"]))


def test_gpu_trainer_config_asks_for_auto_precision_channels_last_and_cudnn_benchmark(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=widerface", "dataset.root=/data"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "auto" and cfg.trainer.benchmark
    assert cfg.module.channels_last is True and cfg.module.compile is False
    assert compose_train(tmp_path, ["compile=true"]).module.compile is True
