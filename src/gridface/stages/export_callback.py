"""Export the run's best (or last) checkpoint when training ends: train -> (prune ->) export in one run.

It calls the export stage the command line calls (:func:`gridface.stages.export.run`), on rank zero only, into
``<run dir>/export/``; a failed export is logged and re-raised after training has saved its checkpoints,
so the trained model is never lost to an export problem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info

from gridface.stages.export import run as export_run

log = logging.getLogger(__name__)


class ExportCallback(pl.Callback):
    def __init__(self, export: DictConfig | dict, dataset: DictConfig | dict, checkpoint: str = "best",
                 output_dir: str | None = None) -> None:
        if checkpoint not in ("best", "last"):
            raise ValueError(f"callbacks.export.checkpoint must be best or last, got {checkpoint!r}")
        self.export_cfg = OmegaConf.create(export if isinstance(export, dict) else OmegaConf.to_container(export))
        # resolved now, while the node still sees the training config (paths.cache_dir, input size)
        self.dataset_cfg = OmegaConf.to_container(dataset, resolve=True) if isinstance(dataset, DictConfig) else dataset
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.result: dict[str, Any] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ckpt_cb = trainer.checkpoint_callback
        path = getattr(ckpt_cb, f"{self.checkpoint}_model_path", None) or getattr(ckpt_cb, "last_model_path", None)
        if not path or not Path(path).is_file():
            raise RuntimeError("export callback: the run saved no checkpoint to export (is ModelCheckpoint on?)")
        out_dir = Path(self.output_dir) if self.output_dir else Path(path).parent.parent / "export"
        cfg = OmegaConf.create({"model": str(path), "output_dir": str(out_dir), "export": self.export_cfg,
                                "dataset": self.dataset_cfg, "paths": {"output_dir": str(out_dir)}})
        rank_zero_info(f"export callback: exporting {path} as {self.export_cfg.format} to {out_dir}")
        self.result = export_run(cfg)
