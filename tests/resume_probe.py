"""A callback for the resume tests, usable in-process and from the command line
(``+callbacks.probe._target_=tests.resume_probe.Probe +callbacks.probe.folder=...``).

It records, per rank and optimizer step (at the start of its batch), the samples and a checksum of their augmented
images (``<folder>/seen.rank<r>.jsonl``; a resumed run appends, and its lines for a step replace the killed run's),
saves the final weights and buffers (``<folder>/final.pt``, rank 0), and can stop a run at the start of the batch after
step N, once that step's checkpoints are written: ``stall_at`` sleeps (for the test to SIGKILL the process),
``fail_at`` raises :class:`Interrupted` (a kill simulated in-process); ``fail_in_validation_at`` raises when the
validation after step N starts (after that step's checkpoints, before validation's own)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class Interrupted(RuntimeError):
    pass


class Probe(pl.Callback):
    def __init__(self, folder: str, stall_at: int | None = None, fail_at: int | None = None,
                 fail_in_validation_at: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stall_at, self.fail_at, self.fail_in_validation_at = stall_at, fail_at, fail_in_validation_at

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.fail_in_validation_at:
            raise Interrupted(f"simulated kill in the validation after step {self.fail_in_validation_at}")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.stall_at:
            (self.folder / "stalled").write_text(str(trainer.global_step))
            time.sleep(600)
        if trainer.global_step == self.fail_at:
            raise Interrupted(f"simulated kill at the start of the batch after step {self.fail_at}")
        # recorded before the step, not after: the preemption callback may end the run in on_train_batch_end
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step + 1,
                  "names": [Path(p).name for p in batch.get("path", [])],
                  "checksum": float(batch["image"].double().sum()) if "image" in batch else None}
        with open(self.folder / f"seen.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                       self.folder / "final.pt")


def history(folder: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(rank, step) -> what was trained at that step, the last record of each winning (a resumed run's lines
    replace the killed run's for the steps it trained again)."""
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("seen.rank*.jsonl")):
        rank = int(path.stem.removeprefix("seen.rank"))
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen[(rank, record["step"])] = record
    return dict(sorted(seen.items()))


def names_per_epoch(seen: dict[tuple[int, int], dict[str, Any]]) -> dict[int, list[str]]:
    """Every sample name trained in each epoch, over all ranks, sorted (repeats kept)."""
    epochs: dict[int, list[str]] = {}
    for record in seen.values():
        epochs.setdefault(record["epoch"], []).extend(record["names"])
    return {e: sorted(names) for e, names in sorted(epochs.items())}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference over every tensor of two state dicts (weights and buffers: BatchNorm
    running statistics and batch counts, the loss weights)."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
