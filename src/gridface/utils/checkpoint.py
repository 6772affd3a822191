"""Checkpoint I/O that writes to a temporary file and renames it, so a kill never corrupts a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from gridface.guards import check_state_finite
from gridface.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it; refuses a checkpoint whose weights are not finite."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        check_state_finite(checkpoint.get("state_dict") or {}, f"refusing to write checkpoint {path}")
        with atomic_path(os.fspath(path)) as tmp:
            torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: not a readable gridface/Lightning checkpoint ({e})") from e
