"""Per-class average precision at one IoU threshold (detection-style matching).

Matching per image follows COCO: detections in descending score order take the best-IoU unmatched
ground truth at IoU >= threshold, preferring counted boxes; a detection whose only match is an
ignored box (invalid, DontCare, crowd, or under the decoder's minimum height: see
:func:`gridface.evaluation.metrics.image_record`) is neither hit nor false positive.
Interpolation: ``all`` (VOC all-point, the default), ``11`` (VOC 2007) or ``101`` (COCO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INTERPOLATIONS = ("all", "11", "101")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` (continuous coordinates, no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(
    det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one image and class. Returns ``(tp, counted)`` per detection in the given order:
    ``tp`` true for a hit, ``counted`` false where the detection matched only an ignored box."""
    n = len(det_scores)
    tp = np.zeros(n, bool)
    counted = np.ones(n, bool)
    if n == 0 or len(gt_boxes) == 0:
        return tp, counted
    order = np.argsort(-np.asarray(det_scores), kind="mergesort")
    ious = iou_matrix(det_boxes, gt_boxes)
    ign = np.asarray(gt_ignore, bool)
    taken = np.zeros(len(gt_boxes), bool)
    for d in order:
        row = ious[d]
        free = (row >= iou) & ~taken & ~ign
        if free.any():
            g = np.flatnonzero(free)[np.argmax(row[free])]
            taken[g] = True
            tp[d] = True
        elif ((row >= iou) & ign).any():
            counted[d] = False
    return tp, counted


def average_precision(recall: np.ndarray, precision: np.ndarray, interpolation: str = "all") -> float:
    """Area under the interpolated PR curve (recall ascending)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got '{interpolation}'")
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1]
    if interpolation == "all":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], envelope, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    points = np.linspace(0, 1, 11 if interpolation == "11" else 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean(np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)))


@dataclass
class ClassCurve:
    ap: float
    recall: np.ndarray
    precision: np.ndarray
    num_gt: int
    scores: np.ndarray | None = None  # the counted detections' scores, highest first (the curve's order)
    hits: np.ndarray | None = None  # whether each matched a face at the IoU


def per_class_ap(
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    iou: float = 0.5,
    interpolation: str = "all",
) -> dict[int, ClassCurve]:
    """AP per class over a dataset.

    ``detections[i] = (boxes, scores, labels)`` and ``ground_truth[i] = (boxes, labels, ignore)`` for
    image i, boxes xyxy in the same (original image) coordinates.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    out = {}
    for c in range(num_classes):
        scores, hits, n_gt = [], [], 0
        for (db, ds, dl), (gb, gl, gi) in zip(detections, ground_truth, strict=True):
            db, ds, dl = np.asarray(db).reshape(-1, 4), np.asarray(ds).reshape(-1), np.asarray(dl).reshape(-1)
            gb, gl, gi = np.asarray(gb).reshape(-1, 4), np.asarray(gl).reshape(-1), np.asarray(gi, bool).reshape(-1)
            dm = dl == c
            gm = gl == c
            g_ign = gi[gm]
            n_gt += int((~g_ign).sum())
            tp, counted = match_image(db[dm], ds[dm], gb[gm], g_ign, iou)
            scores.append(ds[dm][counted])
            hits.append(tp[counted])
        s, h = np.concatenate(scores) if scores else np.zeros(0), np.concatenate(hits) if hits else np.zeros(0, bool)
        order = np.argsort(-s, kind="mergesort")
        tp_cum = np.cumsum(h[order])
        fp_cum = np.cumsum(~h[order])
        recall = tp_cum / max(n_gt, 1)
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        ap = average_precision(recall, precision, interpolation) if n_gt else float("nan")
        out[c] = ClassCurve(ap, recall, precision, n_gt, s[order], h[order])
    return out


def f1_best_threshold(curves: dict[int, ClassCurve]) -> dict[str, float] | None:
    """The score threshold with the best F1 over all classes together (detections matched to faces at the curves'
    IoU, ignored faces counting neither way): keep the boxes scoring ``>= threshold``. A user's operating point,
    chosen where precision and recall balance; None without detections or faces."""
    parts = [c for c in curves.values() if c.scores is not None]
    n_gt = sum(c.num_gt for c in curves.values())
    if not parts or n_gt == 0 or not any(c.hits.any() for c in parts):
        return None  # no detection matched a face: no threshold makes a useful operating point
    scores = np.concatenate([c.scores for c in parts])
    hits = np.concatenate([c.hits for c in parts])
    order = np.argsort(-scores, kind="mergesort")
    scores, tp = scores[order], np.cumsum(hits[order])
    kept = np.arange(1, len(scores) + 1)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every box of equal score: tie groups' ends
    precision, recall = tp / kept, tp / n_gt
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.flatnonzero(last)[np.argmax(f1[last])])
    return {"score_threshold": float(scores[best]), "F1": float(f1[best]), "precision": float(precision[best]),
            "recall": float(recall[best])}
