"""The evaluate stage (``python -m gridface.evaluate``): AP50, COCO mAP and WIDER FACE
easy/medium/hard for any model format,
or for existing predictions in the WIDER submission layout.

    python -m gridface.evaluate model=<.ckpt | .onnx | .engine> dataset=<synthetic | widerface | kitti | coco>
    python -m gridface.evaluate predictions=<submission folder> gt=<folder with the .mat files | bbx_gt.txt>
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gridface.data.check import split_faults
from gridface.data.config import split_samples, stage_data_config
from gridface.data.problems import DataProblems, run_summary
from gridface.evaluation.metrics import detection_metrics
from gridface.evaluation.report import plot_pr_curves, write_report
from gridface.evaluation.widerface import (
    evaluate_predictions,
    load_ground_truth,
    load_predictions,
    write_submission,
)
from gridface.inference.backends import load_backend
from gridface.postprocess import GridBoxDecoder
from gridface.stages.checks import check_stage_config
from gridface.utils.hydra import overrides

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    start = time.perf_counter()
    if cfg.get("predictions"):
        if not cfg.get("gt"):
            raise ValueError("predictions= needs gt=<folder with wider_face_val.mat and the setting files, "
                             "or wider_face_val_bbx_gt.txt>")
        results = evaluate_predictions(load_predictions(cfg.predictions), load_ground_truth(cfg.gt), cfg.evaluation.iou)
        metrics = {f"wider_{s}": r.ap for s, r in results.items()}
        title = f"WIDER FACE evaluation of {cfg.predictions}"
        details: dict[str, Any] = {"predictions": str(cfg.predictions), "gt": str(cfg.gt),
                                   "iou": float(cfg.evaluation.iou)}
    elif cfg.get("model"):
        from gridface.inference.predict import predict_dataset  # torch's DataLoader: not for predictions=

        backend = load_backend(cfg.model, cfg.device, cfg.get("threads"))
        post = {**backend.postprocess, **overrides(cfg.postprocess)}
        decoder = GridBoxDecoder(stride=backend.stride, **post)
        data, origin = stage_data_config(cfg.get("dataset"), backend.data, cfg.model, (cfg.split,))
        problems, skips = DataProblems(strict=bool(data.get("strict", False))), {}
        data_classes = [str(c).lower() for c in data.get("class_names") or backend.class_names]
        if data_classes != [c.lower() for c in backend.class_names]:  # scored by position: the names must agree
            raise ValueError(f"model={cfg.model} detects {list(backend.class_names)}, the dataset's classes are "
                             f"{list(data.get('class_names'))}: set dataset.class_names (and dataset.class_map) to "
                             "the model's classes")
        samples = split_samples(data, cfg.split, problems)
        for _, message in split_faults(samples, cfg.split):
            raise ValueError(f"{message}; nothing to measure for model={cfg.model} (classes "
                             f"{list(backend.class_names)})")
        dets, gts, paths = predict_dataset(backend, samples, decoder, cfg.batch_size, cfg.num_workers, skips)
        wider_path = cfg.get("gt") or cfg.get("wider_gt") or data.get("eval_gt")
        measured = detection_metrics(dets, gts, backend.class_names, cfg.evaluation, paths,
                                     load_ground_truth(wider_path) if wider_path else None,
                                     max_detections=decoder.max_detections)
        metrics, curves, results = measured.values, measured.curves, measured.wider
        if cfg.get("write_predictions"):
            for (b, s, _), p in zip(dets, paths, strict=True):
                write_submission(out_dir / "predictions", Path(p).parent.name, Path(p).stem, b, s)
        if cfg.plots:
            plot_pr_curves(out_dir / "pr_ap50.png", {backend.class_names[c]: (cv.recall, cv.precision, cv.ap)
                                                     for c, cv in curves.items()}, f"PR at IoU {cfg.evaluation.iou}")
        title = f"Evaluation of {cfg.model} on {data.get('name')}/{cfg.split}"
        details = {"model": str(cfg.model), "format": backend.format, "data_from": origin, "images": len(dets),
                   "iou": float(cfg.evaluation.iou),
                   "input_hw": list(backend.input_hw), "postprocess": post,
                   "data_problems": run_summary(problems, skips)}
    else:
        raise ValueError("give model=<checkpoint | .onnx | engine> or predictions=<folder> gt=<ground truth>")
    by_size = {s: r.recall_by_size for s, r in results.items()} or None
    if results and cfg.plots:
        plot_pr_curves(out_dir / "pr_wider.png", {s: (r.recall, r.precision, r.ap) for s, r in results.items()},
                       "WIDER FACE")
    if details["iou"] != 0.5:  # the metric keys keep their names (AP50, ...): the title says what they measured
        title += f" (detections matched at IoU {details['iou']:g}, not 0.5)"
    details["seconds"] = time.perf_counter() - start
    write_report(out_dir, title, metrics, details, by_size)
    print((out_dir / "metrics.md").read_text())
    return {"metrics": metrics, **details}
