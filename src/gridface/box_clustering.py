"""DBSCAN and NMS over boxes, as numba-compiled loops: labels equal to scikit-learn's ``DBSCAN`` (distance 1 - IoU,
sample weights), kept boxes equal to torchvision's ``batched_nms``.

A 46 x 26 grid whose every cell passes the coverage threshold has up to 700k neighbour pairs, which no vectorised
numpy formulation visits in a couple of milliseconds; a loop that stops early (a core box needs only enough
neighbours, a labelled or suppressed box is never visited again) does. The compiled code is cached on disk
after a machine's first run, and the GIL is released while it runs. No torch: a deployed ONNX model needs
neither torch nor torchvision. :func:`warm_up` loads the compiled code ahead of the first image.
"""

from __future__ import annotations

import numpy as np
from numba import njit

KERNEL = {"cache": True, "nogil": True}  # compiled once per machine; the GIL is free while a batch clusters


@njit(inline="always", **KERNEL)
def box_iou_at(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, area: np.ndarray, a: int, b: int
               ) -> float:
    """IoU of boxes ``a`` and ``b`` (torchvision's ``box_iou`` arithmetic in float64; 0 without overlap)."""
    iw = min(x2[a], x2[b]) - max(x1[a], x1[b])
    ih = min(y2[a], y2[b]) - max(y1[a], y1[b])
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = area[a] + area[b] - inter
    return inter / union if union > 0 else 0.0


@njit(inline="always", **KERNEL)
def first_left(link: np.ndarray, p: int) -> int:
    """The first position from ``p`` on (in ``link``'s direction) still unlabelled: ``link[p] == p`` there;
    a labelled position points one step on. Paths are halved on the way, so skipping costs next to nothing."""
    while link[p] != p:
        link[p] = link[link[p]]
        p = link[p]
    return p


@njit(**KERNEL)
def dbscan_sorted(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, w: np.ndarray, cls: np.ndarray,
                  index: np.ndarray, eps: float, min_samples: float) -> np.ndarray:
    """DBSCAN over boxes sorted by x1 (``index[p]``: the original index of position ``p``); labels by position.

    IoU >= 1 - eps needs the x1 of two boxes within eps times the earlier box's width, and a width ratio within
    1 / (1 - eps); so a box's neighbours lie in a window of the x1 order. Core: the weight within eps (a box with
    area counts itself), the scan stopping once it reaches ``min_samples``. Clusters: scikit-learn's expansion,
    seeds in original index order; the expansion walks only unlabelled boxes (two skip lists), so a crowd of
    mutual neighbours is visited about once, not once per pair."""
    n = len(x1)
    area = np.empty(n)
    right = np.empty(n)  # x1 bounds of the window
    left = np.empty(n)
    has_area = np.empty(n, np.bool_)
    for p in range(n):
        bw, bh = x2[p] - x1[p], y2[p] - y1[p]
        has_area[p] = bw > 0 and bh > 0
        area[p] = bw * bh
        right[p] = np.inf if eps >= 1 else x1[p] + eps * bw * (1 + 1e-9) + 1e-9
        left[p] = -np.inf if eps >= 1 else x1[p] - eps * bw / (1 - eps) * (1 + 1e-9) - 1e-9
    core = np.zeros(n, np.bool_)
    for p in range(n):
        if not has_area[p]:  # overlaps nothing, itself included (scikit-learn on torchvision's IoU: nan)
            continue
        total = w[p]
        q = p + 1
        while total < min_samples and q < n and x1[q] <= right[p]:
            if cls[q] == cls[p] and 1.0 - box_iou_at(x1, y1, x2, y2, area, p, q) <= eps:
                total += w[q]
            q += 1
        q = p - 1
        while total < min_samples and q >= 0 and x1[q] >= left[p]:
            if cls[q] == cls[p] and 1.0 - box_iou_at(x1, y1, x2, y2, area, p, q) <= eps:
                total += w[q]
            q -= 1
        core[p] = total >= min_samples
    out = np.full(n, -1, np.int64)
    up = np.arange(n + 1)  # unlabelled positions walking up; n ends it
    down = np.arange(n + 1)  # ... walking down, shifted by one; 0 ends it
    position = np.empty(n, np.int64)
    position[index] = np.arange(n)
    stack = np.empty(n, np.int64)
    clusters = 0
    for i in range(n):
        seed = position[i]
        if not core[seed] or out[seed] >= 0:
            continue
        out[seed] = clusters
        up[seed] = seed + 1
        down[seed + 1] = seed
        stack[0] = seed
        top = 1
        while top:
            top -= 1
            p = stack[top]
            for direction in (1, -1):
                q = first_left(up, p + 1) if direction > 0 else first_left(down, p) - 1
                while 0 <= q < n and (x1[q] <= right[p] if direction > 0 else x1[q] >= left[p]):
                    if cls[q] == cls[p] and 1.0 - box_iou_at(x1, y1, x2, y2, area, p, q) <= eps:
                        out[q] = clusters  # a border box keeps the first cluster that reaches it
                        up[q] = q + 1
                        down[q + 1] = q
                        if core[q]:
                            stack[top] = q
                            top += 1
                    q = first_left(up, q + 1) if direction > 0 else first_left(down, q) - 1
        clusters += 1
    return out


@njit(**KERNEL)
def by_x1(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The boxes' order by x1 (stable) and their x1, y1, x2, y2 columns in that order."""
    order = np.argsort(boxes[:, 0], kind="mergesort")
    n = len(order)
    x1, y1, x2, y2 = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for p in range(n):
        a = order[p]
        x1[p], y1[p], x2[p], y2[p] = boxes[a, 0], boxes[a, 1], boxes[a, 2], boxes[a, 3]
    return order, x1, y1, x2, y2


@njit(**KERNEL)
def dbscan_kernel(boxes: np.ndarray, weights: np.ndarray, labels: np.ndarray, eps: float, min_samples: float
                  ) -> np.ndarray:
    order, x1, y1, x2, y2 = by_x1(boxes)
    by_position = dbscan_sorted(x1, y1, x2, y2, weights[order], labels[order], order, eps, min_samples)
    out = np.empty(len(order), np.int64)
    out[order] = by_position
    return out


def dbscan_boxes(boxes: np.ndarray, weights: np.ndarray, labels: np.ndarray, eps: float, min_samples: float
                 ) -> np.ndarray:
    """DBSCAN of ``boxes`` (same class only) under distance 1 - IoU, ``weights`` as sample weights: a box is core
    when the weight within ``eps`` (itself included) reaches ``min_samples``.

    Returns labels like scikit-learn: clusters numbered in order of their first core point, border points joined
    to the earliest-numbered cluster among their core neighbours, noise -1. A box without area is noise."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return dbscan_kernel(np.ascontiguousarray(boxes, np.float64), np.ascontiguousarray(weights, np.float64),
                         np.ascontiguousarray(labels, np.int64), float(eps), float(min_samples))


@njit(**KERNEL)
def nms_sorted(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, cls: np.ndarray, rank: np.ndarray,
               iou_threshold: float) -> np.ndarray:
    """Greedy NMS over boxes sorted by x1, ``rank[p]`` the score rank of position ``p`` (0 best); returns the
    kept positions, best first. The best box left is kept and suppresses the boxes of its class it overlaps by
    more than the threshold. IoU > t needs the x1 of two boxes within (1 - t) times the earlier one's width and
    a width ratio above t, so the suppressed lie in a window of the x1 order; a skip list walks the boxes still
    undecided only, so each box is passed over a few times, not once per kept box."""
    n = len(x1)
    area = (x2 - x1) * (y2 - y1)
    widest = 0.0
    for p in range(n):
        widest = max(widest, x2[p] - x1[p])
    by_rank = np.empty(n, np.int64)
    by_rank[rank] = np.arange(n)
    up = np.arange(n + 1)  # undecided positions walking up; n ends it
    down = np.arange(n + 1)  # ... walking down, shifted by one; 0 ends it
    decided = np.zeros(n, np.bool_)
    keep = np.empty(n, np.int64)
    kept = 0
    slack = 1 + 1e-9
    for p in by_rank:
        if decided[p]:
            continue
        keep[kept] = p
        kept += 1
        decided[p] = True
        up[p] = p + 1
        down[p + 1] = p
        width = max(x2[p] - x1[p], 0.0)
        right = x1[p] + (1 - iou_threshold) * width * slack + 1e-9
        earlier = widest if iou_threshold <= 0 else min(widest, width / iou_threshold)
        left = x1[p] - (1 - iou_threshold) * earlier * slack - 1e-9
        for direction in (1, -1):
            q = first_left(up, p + 1) if direction > 0 else first_left(down, p) - 1
            while 0 <= q < n and (x1[q] <= right if direction > 0 else x1[q] >= left):
                if cls[q] == cls[p] and box_iou_at(x1, y1, x2, y2, area, p, q) > iou_threshold:
                    decided[q] = True
                    up[q] = q + 1
                    down[q + 1] = q
                q = first_left(up, q + 1) if direction > 0 else first_left(down, q) - 1
    return keep[:kept]


@njit(**KERNEL)
def nms_kernel(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    order, x1, y1, x2, y2 = by_x1(boxes)
    rank = np.empty(len(order), np.int64)
    rank[np.argsort(-scores, kind="mergesort")] = np.arange(len(order))
    return order[nms_sorted(x1, y1, x2, y2, labels[order], rank[order], iou_threshold)]


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy per-class NMS as torchvision's ``batched_nms``: indices kept, by decreasing score (ties in index
    order); a box is suppressed by a kept box of its class with IoU > ``iou_threshold``."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return nms_kernel(np.ascontiguousarray(boxes, np.float64), np.ascontiguousarray(scores, np.float64),
                      np.ascontiguousarray(labels, np.int64), float(iou_threshold))


def warm_up() -> None:
    """Load (or, on a machine's first run, compile) both loops: about half a second that otherwise falls on the
    first image."""
    box = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    dbscan_boxes(box, np.ones(2), np.zeros(2, np.int64), 0.15, 1.0)
    nms(box, np.ones(2), np.zeros(2, np.int64), 0.3)
