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


def compose_config(name: str, output_dir: Path, cache_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """An entry point's real config (train, prune, export, evaluate, infer) writing under the test's folders."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
    return cfg


def compose_train(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    return compose_config("train", tmp_path / "out", tmp_path / "cache", overrides)
