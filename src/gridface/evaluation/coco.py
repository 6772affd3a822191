"""COCO mAP@[.5:.95] and AR through faster-coco-eval (the reference implementation, not rewritten)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def quiet_coco() -> Iterator[None]:
    """faster-coco-eval prints its 12-line summary to stdout and to its INFO log; the caller reports the figures."""
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def coco_metrics(
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, float]:
    """Boxes xyxy in original pixels; ignore boxes become ``iscrowd`` (COCO's only ignore mechanism)."""
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    for i, ((db, ds, dl), (gb, gl, gi)) in enumerate(zip(detections, ground_truth, strict=True)):
        images.append({"id": i, "width": 1, "height": 1})
        for b, label, ign in zip(np.asarray(gb).reshape(-1, 4), np.asarray(gl).reshape(-1),
                                 np.asarray(gi).reshape(-1), strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(bool(ign))})
        for b, s, label in zip(np.asarray(db).reshape(-1, 4), np.asarray(ds).reshape(-1),
                               np.asarray(dl).reshape(-1), strict=True):
            dets.append({"image_id": i, "category_id": int(label) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    if not anns:
        return {"mAP": float("nan"), "AP50": float("nan"), "AP75": float("nan"), "AR": float("nan")}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    gt.createIndex()
    with quiet_coco():
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval_faster(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_dets]
        if not dets:
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"mAP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[8])}
