"""Export the run's best (or last) checkpoint when training ends: train -> (prune ->) export in one run.

It calls the export stage the command line calls (:func:`gridface.stages.export.run`), on rank zero only, into
``<run dir>/export/``, with the config that command composes: :func:`gridface.utils.hydra.stage_config` from
``model=``, ``output_dir=``, ``export=<option>`` and the option's keys as the training config holds them
(``callbacks.export.export.*``), and the training run's dataset keys. A failed export is logged and re-raised after
training has saved its checkpoints, so the trained model is never lost to an export problem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info

from gridface.stages.export import run as export_run
from gridface.training.resume import last_checkpoint_path
from gridface.utils.hydra import flat_overrides, override, stage_config

log = logging.getLogger(__name__)


def export_option(export: dict[str, Any]) -> str:
    """The ``export`` group option (``configs/export/<option>.yaml``) a node of that group was composed from."""
    fmt = str(export.get("format", "onnx"))
    return f"tensorrt_{export.get('precision', 'fp32')}" if fmt == "tensorrt" else fmt


class ExportCallback(pl.Callback):
    def __init__(self, export: DictConfig | dict, dataset: DictConfig | dict, checkpoint: str = "best",
                 output_dir: str | None = None) -> None:
        if checkpoint not in ("best", "last"):
            raise ValueError(f"callbacks.export.checkpoint must be best or last, got {checkpoint!r}")
        # both resolved now, while the nodes still see the training config (paths.cache_dir, input size)
        self.export_cfg = OmegaConf.create(OmegaConf.to_container(export, resolve=True)
                                           if isinstance(export, DictConfig) else export)
        self.dataset_cfg = OmegaConf.to_container(dataset, resolve=True) if isinstance(dataset, DictConfig) \
            else dataset
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.result: dict[str, Any] | None = None

    def overrides(self, model: str | Path, out_dir: Path) -> list[str]:
        """What ``python -m gridface.export`` would be given to export ``model`` as this callback is configured."""
        args = [override("model", str(model)), override("output_dir", str(out_dir)),
                f"export={export_option(self.export_cfg)}", *flat_overrides("export", self.export_cfg)]
        return args + (flat_overrides("dataset", self.dataset_cfg) if self.dataset_cfg else [])

    def export_config(self, model: str | Path, out_dir: Path) -> DictConfig:
        return stage_config("export", self.overrides(model, out_dir), output_dir=out_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", None)
        path = (best if self.checkpoint == "best" else None) or last_checkpoint_path(trainer)
        if not path or not Path(path).is_file():
            raise RuntimeError("export callback: the run saved no checkpoint to export (is ModelCheckpoint on?)")
        out_dir = Path(self.output_dir) if self.output_dir else Path(path).parent.parent / "export"
        cfg = self.export_config(path, out_dir)
        rank_zero_info(f"export callback: exporting {path} as {cfg.export.format} to {out_dir}")
        self.result = export_run(cfg)
