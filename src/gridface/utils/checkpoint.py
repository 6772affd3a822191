"""Checkpoint I/O that writes to a temporary file and renames it, so a kill never corrupts a checkpoint."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from gridface.utils.finite import check_state_finite
from gridface.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it; refuses a checkpoint whose weights are not finite."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        check_state_finite(checkpoint.get("state_dict") or {}, f"refusing to write checkpoint {path}")
        save_atomically(checkpoint, path)


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file renamed over ``path``. Saved into an open file, not by name: torch
    names the zip's records after the file it writes (here a random temporary name), so two saves of the same
    weights differed in their bytes, and the pipeline, which tells a changed model by its hash, redid every stage
    after an unchanged prune."""
    with atomic_path(os.fspath(path)) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


TRUST_ENV = "GRIDFACE_TRUST_CHECKPOINTS"


def load_checkpoint(path: str | Path, trust: bool | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only, so a downloaded
    ``.ckpt`` cannot run code when it is opened. gridface and Lightning checkpoints need nothing more. A file
    that holds other pickled objects is refused, naming them; ``trust=True`` (or ``GRIDFACE_TRUST_CHECKPOINTS=1``)
    opens it with full unpickling, for files you made or trust."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    trust = os.environ.get(TRUST_ENV, "") == "1" if trust is None else trust
    with path.open("rb") as f:
        legacy = f.read(1) == b"\x80"  # a pickle: torch.save's format before torch 1.6
    problem = None if legacy else zip_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}; a damaged or partly copied file, or another kind of file with a .ckpt "
                         "name?")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if not found and "global" not in str(e).lower():  # damaged data, not an object the safe loader refuses
            raise ValueError(f"{path}: not a readable gridface/Lightning checkpoint (its data is damaged: "
                             f"{(str(e).strip().splitlines() or ['?'])[-1]}); a damaged or partly copied file?"
                             ) from None
        what = f"objects of {', '.join(dict.fromkeys(found))}" if found else "objects other than weights"
        raise ValueError(
            f"{path}: refusing to load it: it holds {what}, and unpickling those can run arbitrary code. If you "
            f"made this file or trust where it came from, load it deliberately with {TRUST_ENV}=1") from None
    except Exception as e:  # noqa: BLE001 - any other reading failure means the same thing to the user
        raise ValueError(f"{path}: not a readable gridface/Lightning checkpoint ({str(e).strip() or type(e).__name__})"
                         ) from e


def zip_problem(path: Path) -> str | None:
    """Why a checkpoint file is not a whole zip archive as torch.save writes it (since torch 1.6), or None. The
    members' CRCs are checked too: torch.load reads none, so damaged weights would load."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        size = path.stat().st_size
        return f"not a PyTorch checkpoint ({size} bytes, not the zip archive torch.save writes" + \
            (": an empty file)" if not size else ")")
    return f"not a readable gridface/Lightning checkpoint (its data is damaged: {damaged} fails its checksum)" \
        if damaged else None
