"""Where a training run resumes from: ``ckpt_path=auto`` takes the newest resumable checkpoint of the run folder,
so a requeued or restarted job (same folder) goes on from where it stopped."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

RESUMABLE = ("last.ckpt", "step.ckpt", "preempted.ckpt")  # what ckpt_path=auto picks from, newest first


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``auto``: the newest of the run folder's resumable checkpoints, or None for a fresh run. A path is
    checked and returned as given."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path != "auto":
        if not Path(ckpt_path).expanduser().is_file():
            raise FileNotFoundError(f"ckpt_path: checkpoint not found: {ckpt_path}")
        return str(ckpt_path)
    found = [p for p in (Path(output_dir) / "checkpoints" / name for name in RESUMABLE) if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    log.info("resuming from %s (ckpt_path=auto: the newest checkpoint of this run folder)", newest)
    return str(newest)
