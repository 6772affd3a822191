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
    """Boxes xyxy in original pixels; ignore boxes become ``iscrowd`` (COCO's only ignore mechanism).

    ``max_dets``: detections counted per image (give the decoder's ``max_detections``: a WIDER crowd image holds
    more than COCO's 100 faces). ``mAP``, ``AP50``, ``AP75`` and ``AR`` count up to ``max(max_dets, 100)``;
    ``AR1``, ``AR10``, ``AR100`` (COCO's standard names) and ``AR<max_dets>`` are recall at those limits.
    """
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
    limits = sorted({1, 10, 100, int(max_dets)})
    names = ["mAP", "AP50", "AP75", "AR", *(f"AR{n}" for n in limits)]
    if not anns:
        return dict.fromkeys(names, float("nan"))
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    gt.createIndex()
    with quiet_coco():
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval_faster(gt, dt, iouType="bbox")
        ev.params.maxDets = limits
        if not dets:
            return dict.fromkeys(names, 0.0)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()  # its AP figures count up to the largest limit
        # recall at every limit from the evaluator's own summary function (summarize() has only three AR slots
        # before faster-coco-eval 1.8)
        recall = {f"AR{n}": float(ev._summarize(0, maxDets=n)) for n in limits}
    s = ev.stats
    return {"mAP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": recall[f"AR{limits[-1]}"], **recall}
