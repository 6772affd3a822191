"""Where the Hydra configs live: ``configs/`` of a source checkout, or ``gridface/configs`` of a wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("len", lambda x: len(x), replace=True)

_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> str:
    for candidate in (_PACKAGE.parent.parent / "configs", _PACKAGE / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"gridface configs not found next to {_PACKAGE}; reinstall the package")


def overrides(node: Any) -> dict[str, Any]:
    """A config node of optional overrides as a dict, the unset (null) keys dropped."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}
