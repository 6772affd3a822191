"""Prune as the first step of a training run, so prune -> retrain -> export is one command.

Pruning happens in ``setup``: after the weights of ``model=`` are loaded, before optimizers,
DDP wrappers or checkpoint restoration exist, so nothing ever holds a reference to a removed channel and
the network is never changed in the middle of training. Every rank prunes the same weights the same way
(magnitude criteria are deterministic). A resumed run (``ckpt_path=``) takes the pruned widths from its
checkpoint instead of pruning again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info

from gridface.data.datamodule import training_batches
from gridface.pruning.pruner import PruneSpec, count_macs_params, prune_module, taylor_losses
from gridface.utils.checkpoint import load_checkpoint


class PruneCallback(pl.Callback):
    def __init__(self, spec: Mapping[str, Any], resume_from: str | None = None) -> None:
        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec, resolve=True)
        self.spec = PruneSpec.from_config(dict(spec))
        self.resume_from = resume_from
        self.summary: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.summary:
            return
        if self.resume_from:
            hparams = load_checkpoint(self.resume_from).get("hyper_parameters") or {}
            widths = (hparams.get("model") or {}).get("widths")
            if widths:
                pl_module.set_widths(widths)
                self.summary = {"resumed": self.resume_from}
                rank_zero_info(f"prune callback: resuming, pruned widths taken from {self.resume_from}")
                return
        if not (pl_module.hparams.get("model") or {}).get("init_from"):
            rank_zero_info("prune callback: model= (the input model) is not set, so a randomly initialised network is "
                           "pruned; give model=<trained.ckpt> to prune a trained one")
        net = pl_module.net
        before = count_macs_params(net, pl_module.input_hw)
        losses = None
        if self.spec.criterion == "taylor":
            losses = taylor_losses(pl_module, training_batches(trainer.datamodule, pl_module.device))
        prune_module(pl_module, self.spec, losses)
        widths = pl_module.hparams["model"]["widths"]
        if trainer.world_size > 1:  # every rank must hold the same network; stop all of them if not
            differs = trainer.strategy.broadcast(widths, src=0) != widths
            if trainer.strategy.reduce_boolean_decision(differs, all=False):
                raise RuntimeError(f"ranks pruned to different widths (criterion={self.spec.criterion}): prune "
                                   "once with gridface.prune and retrain from its checkpoint")
        after = count_macs_params(net, pl_module.input_hw)
        self.summary = {"params": [before[1], after[1]], "macs": [before[0], after[0]]}
        rank_zero_info(f"prune callback ({self.spec.mode}): parameters {before[1]:,} -> {after[1]:,} "
                       f"({after[1] / before[1]:.3f}), MACs at {pl_module.input_hw} {after[0] / before[0]:.3f}")
