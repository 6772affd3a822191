"""The prune stage (``python -m gridface.prune model=<trained .ckpt> prune=<ratio | threshold>``).

Writes ``pruned.ckpt`` (a normal gridface checkpoint whose hyper-parameters carry the per-layer widths,
so every entry point loads it in a fresh process) and ``prune_report.{json,md}``: per-layer kept
channels, parameters and MACs, CPU latency before and after measured side by side, and AP50 before
pruning, right after, and after retraining when ``retrained=<ckpt>`` is given. Retrain with
``python -m gridface.train experiment=retrain model=<pruned.ckpt>``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from gridface.data.config import split_samples, stage_data_config
from gridface.data.dataset import DetectionDataset, collate
from gridface.inference.backends import TorchBackend
from gridface.inference.predict import predict_dataset
from gridface.model.widths import channel_widths
from gridface.module import GridBoxModule
from gridface.pruning.pruner import PruneSpec, prune_module, taylor_losses
from gridface.pruning.report import layer_table, size_summary, torch_latency, write_prune_report
from gridface.stages.checks import check_model_file, check_stage_config
from gridface.training.qat import STATE_KEY as QAT_STATE_KEY
from gridface.utils.checkpoint import load_checkpoint, save_atomically
from gridface.utils.validate import check_number

log = logging.getLogger(__name__)


def validation_ap50(module: GridBoxModule, samples: list, batch_size: int, num_workers: int, path: Path) -> float:
    """AP50 of an in-memory module with its own post-processing and evaluation settings."""
    backend = TorchBackend(path, module=module)
    dets, gts, paths = predict_dataset(backend, samples, module.decoder, batch_size, num_workers)
    return module.compute_metrics(dets, gts, paths)["AP50"]


def save_pruned_checkpoint(module: GridBoxModule, path: Path, source: str, spec: PruneSpec) -> None:
    """A Lightning-layout checkpoint: ``GridBoxModule.from_checkpoint`` and ``model=`` read it."""
    hparams = copy.deepcopy(dict(module.hparams))
    hparams["model"] = {**hparams.get("model", {}), "init_from": None, "pretrained": None}
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__,
            "gridface_pruning": {"source_checkpoint": source, "spec": vars(spec)}}
    save_atomically(ckpt, path)


def spec_summary(spec: PruneSpec) -> str:
    common = f"criterion={spec.criterion} normalizer={spec.normalizer} equalization={spec.equalization}"
    if spec.mode == "threshold":
        return (f"threshold={spec.threshold} min_num_filters={spec.min_num_filters} "
                f"granularity={spec.granularity} {common}")
    target = f"target_macs={spec.target_macs}" if spec.target_macs is not None else f"ratio={spec.ratio}"
    return f"{target} global={spec.global_pruning} granularity={spec.granularity} {common}"


def run(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    if not cfg.get("model"):
        raise ValueError("give model=<path to a trained gridface .ckpt>")
    check_number("batch_size", cfg.get("batch_size"), 1, integer=True)
    check_number("num_workers", cfg.get("num_workers"), 0, integer=True)
    check_number("latency.batch", cfg.latency.get("batch"), 1, integer=True)
    check_number("latency.reps", cfg.latency.get("reps"), 0, integer=True)
    check_number("latency.warmup", cfg.latency.get("warmup"), 0, integer=True)
    if cfg.get("retrained"):  # before minutes of pruning and evaluation, not after
        check_model_file("prune", str(cfg.retrained), key="retrained")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    spec = PruneSpec.from_config(OmegaConf.to_container(cfg.prune, resolve=True))
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    source = str(cfg.model)
    if load_checkpoint(source).get(QAT_STATE_KEY):
        raise ValueError(f"model={source} is a quantization-aware training checkpoint: prune the float model it was "
                         "trained from, then run experiment=qat on the pruned, retrained one")
    module = GridBoxModule.from_checkpoint(source).eval()
    splits = (["train"] if spec.criterion == "taylor" else []) + ([cfg.split] if cfg.evaluate else [])
    data, origin = stage_data_config(cfg.get("dataset"), module.hparams.get("data"), source, splits)
    pruned = copy.deepcopy(module)
    losses = None
    if spec.criterion == "taylor":
        encoder = instantiate(cfg.targets, num_classes=len(module.class_names))
        train = DetectionDataset(split_samples(data, "train"), module.input_hw, encoder, None, "train")
        loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
        losses = taylor_losses(pruned, loader)
    prune_module(pruned, spec, losses).eval()
    ckpt_path = out_dir / "pruned.ckpt"
    save_pruned_checkpoint(pruned, ckpt_path, source, spec)

    lat_hw = list(cfg.latency.input_hw or module.input_hw)
    before, after = size_summary(module.net, lat_hw), size_summary(pruned.net, lat_hw)
    layers = layer_table(channel_widths(module.net), channel_widths(pruned.net))
    warnings = []
    if after["params"] == before["params"]:
        warnings.append(f"nothing was pruned ({spec_summary(spec)}): " + (
            "no channel scored below prune.threshold. Filters of a model trained without loss.l1_regularization "
            "have similar norms; raise prune.threshold or use prune=ratio" if spec.mode == "threshold" else
            "every layer keeps all its channels after rounding to prune.granularity; raise prune.ratio or lower "
            "prune.granularity"))
    report: dict[str, Any] = {
        "source_checkpoint": source, "pruned_checkpoint": str(ckpt_path), "spec": vars(spec),
        "spec_summary": spec_summary(spec), "input_hw": lat_hw, "before": before, "after": after,
        "params_ratio": after["params"] / before["params"], "macs_ratio": after["macs"] / before["macs"],
        "layers": layers, "warnings": warnings,
    }
    if cfg.latency.reps:
        lat = torch_latency({"before": module.net, "after": pruned.net}, lat_hw, cfg.latency.batch,
                            cfg.latency.reps, cfg.latency.warmup)
        report["latency"] = {"backend": "pytorch eager fp32 cpu", "input_hw": lat_hw, "batch": cfg.latency.batch,
                             "threads": torch.get_num_threads(), **lat,
                             "ratio": lat["after"]["median_ms"] / lat["before"]["median_ms"]}
    if cfg.evaluate:
        samples = split_samples(data, cfg.split)
        ap = {"dataset": f"{data.get('name')}/{cfg.split}", "data_from": origin, "images": len(samples),
              "before": validation_ap50(module, samples, cfg.batch_size, cfg.num_workers, Path(source)),
              "pruned": validation_ap50(pruned, samples, cfg.batch_size, cfg.num_workers, ckpt_path)}
        if cfg.get("retrained"):
            retrained = GridBoxModule.from_checkpoint(cfg.retrained).eval()
            if channel_widths(retrained.net) != channel_widths(pruned.net):
                warnings.append(f"retrained={cfg.retrained} does not have this pruning's layer widths: its AP is not "
                                "this pruning's retrained AP")
                log.warning(warnings[-1])
            ap["retrained"] = validation_ap50(retrained, samples, cfg.batch_size, cfg.num_workers,
                                              Path(cfg.retrained))
            ap["retrained_checkpoint"] = str(cfg.retrained)
        report["ap50"] = ap
    print(write_prune_report(out_dir, report))
    return report
