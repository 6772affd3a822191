"""Shared test helpers: compose the real Hydra config with small, fast overrides."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gridface.utils.hydra import config_dir

TINY = [
    "dataset.train.num_images=24",
    "dataset.val.num_images=8",
    "dataset.batch_size=4",
    "dataset.num_workers=0",
    "print_config=false",
]


def compose_train(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg
