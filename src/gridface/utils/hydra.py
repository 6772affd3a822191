"""Where the Hydra configs live: ``configs/`` of a source checkout, or ``gridface/configs`` of a wheel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def rank_suffix() -> str:
    """'' for rank 0 (or a single process), '_rank<N>' otherwise: one log file per rank."""
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")) or 0)
    return f"_rank{rank}" if rank else ""


def rank_output_subdir() -> str | None:
    """Hydra's ``.hydra`` folder for rank 0 only: the other ranks of a Slurm job would write the same files."""
    return None if rank_suffix() else ".hydra"


def gpus_per_node(accelerator: str, devices: Any) -> int | None:
    """Slurm's ``--gpus-per-node`` for a Trainer: its device count on GPUs, none on CPUs."""
    if str(accelerator) in ("gpu", "cuda", "auto") and isinstance(devices, int) and devices > 0:
        return devices
    return None


OmegaConf.register_new_resolver("len", lambda x: len(x), replace=True)
OmegaConf.register_new_resolver("rank_suffix", rank_suffix, replace=True)
OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node, replace=True)
OmegaConf.register_new_resolver("rank_output_subdir", rank_output_subdir, replace=True)

_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> str:
    for candidate in (_PACKAGE.parent.parent / "configs", _PACKAGE / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"gridface configs not found next to {_PACKAGE}; reinstall the package")


def group_default(group: str, option: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``configs/<group>/<option>.yaml`` with ``values`` merged over it, interpolations resolved within the file: the
    defaults of code that runs without a composed config (a module built in a test, an older checkpoint), so each
    default is written once, in the YAML. A file with a defaults list is refused (compose that one with Hydra)."""
    node = OmegaConf.load(Path(config_dir()) / group / f"{option}.yaml")
    if "defaults" in node:
        raise ValueError(f"configs/{group}/{option}.yaml has a defaults list; group_default reads single files")
    if values:
        node = OmegaConf.merge(node, values)
    return OmegaConf.to_container(node, resolve=True)


def overrides(node: Any) -> dict[str, Any]:
    """A config node of optional overrides as a dict, the unset (null) keys dropped."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}
