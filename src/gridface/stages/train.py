"""The train stage: build the module, data and Trainer from a composed config, fit, and report. Used by
``python -m gridface.train``, ``python -m gridface.tune`` (one call per trial) and ``gridface.pipeline``."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from gridface.accelerator import check_gpu_available, resolve_precision
from gridface.data.config import training_data_config
from gridface.data.problems import run_summary, summary_line
from gridface.stages.checks import check_stage_config
from gridface.training.launch import check_ddp_launch, cluster_plugins
from gridface.training.resume import (
    TrainingSettingsRecord,
    last_checkpoint_path,
    measure_settings,
    resolve_ckpt_path,
    training_settings,
)
from gridface.utils.checkpoint import AtomicCheckpointIO

log = logging.getLogger(__name__)


def build(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None
          ) -> tuple[pl.LightningModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate the module, the datamodule and the trainer from a composed config (plus ``extra_callbacks``,
    e.g. a tuning trial's pruning callback)."""
    module = instantiate(cfg.module, _convert_="all")
    # after instantiation: the source configs carry _target_ and must stay configs, not become objects
    module.hparams["data"] = training_data_config(cfg.dataset)
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [*(extra_callbacks or []), TrainingSettingsRecord(training_settings(cfg), measure_settings(cfg))]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    if not loggers:  # LearningRateMonitor refuses to run without a logger; logger=none must still train
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    check_gpu_available(cfg.trainer.get("accelerator"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          precision=resolve_precision(cfg.trainer), plugins=[AtomicCheckpointIO(), *cluster_plugins()])
    return module, datamodule, trainer


def run(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train, validate, and return the final metrics (floats) plus the best/last checkpoint paths."""
    check_stage_config(cfg)
    check_gpu_available(cfg.trainer.get("accelerator"))  # first: before the data and the model are built
    check_ddp_launch(cfg.trainer, multirun=is_multirun())
    with open_dict(cfg):  # resolved before the callbacks read it (the prune callback's resume_from)
        cfg.ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir, training_settings(cfg))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    module, datamodule, trainer = build(cfg, callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elapsed = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not metrics and cfg.get("ckpt_path") and trainer.limit_val_batches:
        # resumed a run that had already finished: nothing was trained, so report its last weights' metrics
        rank_zero_info(f"{cfg.ckpt_path} had already finished training; validating it")
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt_cb = trainer.checkpoint_callback
    result = {
        "metrics": metrics,
        "global_step": int(trainer.global_step),
        "resumed_from": cfg.get("ckpt_path"),
        "train_seconds": elapsed,
        "best_checkpoint": getattr(ckpt_cb, "best_model_path", None),
        "last_checkpoint": last_checkpoint_path(trainer) or None,
        "best_score": float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None else None,
        "data_problems": run_summary(datamodule.problems, module.skipped_images, module.decode_problems),
    }
    rank_zero_info(summary_line(result["data_problems"]["counts"]))
    rank_zero_info(f"training took {elapsed / 60:.1f} min; final {metrics}; "
                   f"best checkpoint {result['best_checkpoint']}")
    if not metrics and trainer.limit_val_batches:
        kept = (f"the final weights are in {result['last_checkpoint']}" if result["last_checkpoint"] else
                "no checkpoint holds its final step")
        rank_zero_warn("no validation ran (trainer.max_steps or check_val_every_n_epoch ended the run before one): "
                       f"no val metrics and no best.ckpt; {kept}")
    return result


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_rank_zero() -> bool:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
