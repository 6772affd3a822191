"""The operating point training now records, for a checkpoint trained before it did: the F1-best score threshold on
the checkpoint's own validation split, computed by the code validation runs (GridBoxModule's decoder,
image_record, per_class_ap, f1_best_threshold), written into a copy of the checkpoint.

    PYTHONPATH=src .venv/bin/python experiments/scores_2026-12-04/threshold.py <best.ckpt> <out.ckpt>
"""

from __future__ import annotations

import json
import sys

import torch

from gridface.data.config import split_samples, stage_data_config
from gridface.evaluation.ap import f1_best_threshold
from gridface.evaluation.metrics import detection_metrics
from gridface.inference.backends import TorchBackend
from gridface.inference.predict import predict_dataset
from gridface.module import GridBoxModule


def main(src: str, dst: str) -> None:
    module = GridBoxModule.from_checkpoint(src).eval()
    backend = TorchBackend(src, module=module)
    data, origin = stage_data_config(None, module.hparams.get("data"), src, ("val",))
    dets, gts, _ = predict_dataset(backend, split_samples(data, "val"), module.decoder, 16, 0)
    measured = detection_metrics(dets, gts, module.class_names, module.eval_cfg, max_detections=1000)
    point = f1_best_threshold(measured.curves)
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["postprocess"] = {**(ckpt["hyper_parameters"].get("postprocess") or {}),
                                               "score_threshold": round(point["score_threshold"], 6)}
    torch.save(ckpt, dst)
    print(json.dumps({"checkpoint": src, "validation": origin, "images": len(gts), "AP50": measured.values["AP50"],
                      **point}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
