"""Turn raw ``{cov, bbox}`` maps into detections: threshold, decode, cluster (DBSCAN, NMS or both).

DBSCAN follows TAO: distance 1 - IoU between cell boxes, coverage as sample weight (a cell is core when
the coverage summed over its eps-neighbourhood reaches ``min_samples``), noise dropped, a cluster's box
the coverage-weighted mean, its confidence the summed (``aggregate_cov``) or mean (``mean_cov``)
coverage. Labels follow scikit-learn's order exactly, so results can be checked against
``sklearn.cluster.DBSCAN``.

Numpy and scipy only (no torch), so a deployed ONNX model needs neither torch nor torchvision. Neighbours are
found without an all-pairs IoU matrix (see :func:`overlapping_pairs`); IoU is computed for candidate pairs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gridface.targets import decode_boxes

CLUSTERING = ("dbscan", "nms", "hybrid")
CONFIDENCE = ("aggregate_cov", "mean_cov")


@dataclass
class Detections:
    """Boxes ``[K, 4]`` xyxy pixels, ``scores [K]`` and ``labels [K]`` of one image (numpy)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def pair_iou(cols: tuple[np.ndarray, ...], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU of boxes ``i[k]`` and ``j[k]``; ``cols`` are the x1, y1, x2, y2 columns (contiguous, for fast gathers)."""
    x1, y1, x2, y2 = cols  # ``i`` may be one index: one box against many
    iw = np.minimum(x2[i], x2[j])
    iw -= np.maximum(x1[i], x1[j])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(y2[i], y2[j])
    ih -= np.maximum(y1[i], y1[j])
    np.maximum(ih, 0, out=ih)
    inter = iw * ih
    area = (x2 - x1) * (y2 - y1)
    union = area[i] + area[j] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def window_pairs(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted ``keys``: all (a, b) with ``lo[a] <= keys[b] <= hi[a]`` (positions in the sorted order)."""
    start = np.searchsorted(keys, lo, side="left")
    end = np.searchsorted(keys, hi, side="right")
    counts = np.maximum(end - start, 0)
    total = int(counts.sum())
    a = np.repeat(np.arange(len(keys)), counts)
    b = np.arange(total) - np.repeat(np.cumsum(counts) - counts - start, counts)
    return a, b


def overlapping_pairs(boxes: np.ndarray, min_iou: float, labels: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` (same label) with IoU >= ``min_iou`` (up to rounding: callers make the exact
    comparison), and their IoU, without an n x n matrix. ``min_iou <= 0`` pairs everything.

    IoU >= t needs |x1_i - x1_j| <= (1 - t) max(w_i, w_j) = r_x, and the same for y1 with the heights. Boxes go
    into columns r_x wide by x1 and are sorted by (column, y1): each box's candidates are the boxes of its own
    column and the next one whose y1 lies within r_y, found by binary search; IoU is computed for those alone."""
    n = len(boxes)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0)
    cols = tuple(np.ascontiguousarray(boxes[:, k], np.float64) for k in range(4))
    if min_iou > 0:
        slack = (1.0 - min_iou) * (1 + 1e-9)
        reach_x = slack * float((cols[2] - cols[0]).max()) + 1e-6
        reach_y = slack * float((cols[3] - cols[1]).max()) + 1e-6
        column = np.floor((cols[0] - cols[0].min()) / reach_x)
        span = float(cols[1].max() - cols[1].min()) + 4 * reach_y + 1.0  # keeps columns apart in the key
        keys = column * span + (cols[1] - cols[1].min())
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        a1, b1 = window_pairs(keys, keys, keys + reach_y)  # same column, later in y1 order
        later = b1 > a1  # drops (a, a) and ties listed before a: each pair once
        a2, b2 = window_pairs(keys, keys + span - reach_y, keys + span + reach_y)  # the next column
        a, b = np.concatenate([a1[later], a2]), np.concatenate([b1[later], b2])
    else:
        a, b = np.triu_indices(n, 1)
        order = np.arange(n)
    i, j = order[a], order[b]
    near = np.abs(cols[0][i] - cols[0][j]) <= reach_x if min_iou > 0 else np.ones(len(i), bool)
    if labels is not None:
        near &= labels[i] == labels[j]
    i, j = i[near], j[near]
    iou = pair_iou(cols, i, j)
    ok = iou >= min_iou - 1e-9
    i, j, iou = i[ok], j[ok], iou[ok]
    swap = i > j
    return np.where(swap, j, i), np.where(swap, i, j), iou


def dbscan_labels(n: int, pairs: tuple[np.ndarray, np.ndarray], weights: np.ndarray, min_samples: float
                  ) -> np.ndarray:
    """DBSCAN over ``n`` points whose eps-neighbours are the ``pairs`` (i, j), each listed once, a point being
    its own neighbour implicitly.

    Returns labels like scikit-learn: clusters numbered in order of their first core point, border
    points joined to the earliest-numbered cluster among their core neighbours, noise -1.
    """
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    i, j = pairs
    weights = np.asarray(weights, np.float64)
    reach = weights + np.bincount(i, weights[j], minlength=n) + np.bincount(j, weights[i], minlength=n)
    core = reach >= min_samples
    if not core.any():
        return labels
    both = core[i] & core[j]
    graph = coo_matrix((np.ones(int(both.sum())), (i[both], j[both])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    core_idx = np.flatnonzero(core)
    # Number the components holding core points by their lowest core index (sklearn's expansion order).
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp[core_idx], core_idx)
    used = np.flatnonzero(first < n)
    rank = np.full(len(first), -1, np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(len(used))
    labels[core_idx] = rank[comp[core_idx]]
    # A border point joins the earliest-numbered cluster among its core neighbours.
    big = np.iinfo(np.int64).max
    best = np.full(n, big, np.int64)
    for src, dst in ((i, j), (j, i)):
        m = core[src] & ~core[dst]
        np.minimum.at(best, dst[m], labels[src[m]])
    border = ~core & (best < big)
    labels[border] = best[border]
    return labels


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy per-class NMS as torchvision's ``batched_nms``: indices kept, by decreasing score; a box is
    suppressed by a kept box of its class with IoU > ``iou_threshold``. Each kept box is compared with the
    boxes still standing only (classes kept apart by offsetting their coordinates, as torchvision does)."""
    order = np.argsort(-scores, kind="stable")
    if len(order) < 2:
        return order
    offset = (labels.astype(np.float64) * (float(boxes.max()) + 1.0))[:, None] if labels.max() > 0 else 0.0
    b = (boxes + offset)[order]
    cols = tuple(np.ascontiguousarray(b[:, k]) for k in range(4))
    alive = np.arange(len(order))
    keep = []
    while len(alive):
        k, rest = alive[0], alive[1:]
        keep.append(k)
        alive = rest[pair_iou(cols, k, rest) <= iou_threshold]
    return order[np.asarray(keep, np.int64)]


class GridBoxDecoder:
    """Post-processing of a batch of GridBox outputs into per-image :class:`Detections`."""

    def __init__(
        self,
        stride: int = 16,
        coverage_threshold: float = 0.004,
        clustering: str = "dbscan",
        dbscan_eps: float = 0.15,
        dbscan_min_samples: float = 1.0,
        confidence_model: str = "aggregate_cov",
        nms_iou_threshold: float = 0.3,
        confidence_threshold: float = 0.0,
        minimum_bounding_box_height: float = 4.0,
        max_candidates: int = 4000,
        max_detections: int = 1000,
    ) -> None:
        if clustering not in CLUSTERING:
            raise ValueError(f"postprocess.clustering must be one of {CLUSTERING}, got '{clustering}'")
        if confidence_model not in CONFIDENCE:
            raise ValueError(f"postprocess.confidence_model must be one of {CONFIDENCE}, got '{confidence_model}'")
        if not 0.0 < dbscan_eps <= 1.0:
            raise ValueError(f"postprocess.dbscan_eps must be in (0, 1], got {dbscan_eps}")
        self.stride = stride
        self.coverage_threshold = coverage_threshold
        self.clustering = clustering
        self.eps = dbscan_eps
        self.min_samples = dbscan_min_samples
        self.confidence_model = confidence_model
        self.nms_iou = nms_iou_threshold
        self.confidence_threshold = confidence_threshold
        self.min_height = minimum_bounding_box_height
        self.max_candidates = max_candidates
        self.max_detections = max_detections

    def __call__(self, cov: np.ndarray, bbox: np.ndarray, image_hw: tuple[int, int]) -> list[Detections]:
        """cov ``[B, C, h, w]`` (after sigmoid), bbox ``[B, 4C, h, w]`` (numpy, or CPU tensors); image_hw is the
        network input size."""
        cov = np.asarray(cov, np.float32)
        boxes = decode_boxes(np.asarray(bbox, np.float32), self.stride, image_hw)  # [B, C, h, w, 4]
        out = []
        for b in range(cov.shape[0]):
            keep = cov[b] > self.coverage_threshold  # NaN compares False
            keep &= np.isfinite(boxes[b]).all(-1)
            cls, ys, xs = np.nonzero(keep)
            scores = cov[b][cls, ys, xs]
            cand = boxes[b][cls, ys, xs]
            if len(scores) > self.max_candidates:
                top = np.argsort(-scores, kind="stable")[: self.max_candidates]
                cls, scores, cand = cls[top], scores[top], cand[top]
            out.append(self._cluster(cand.astype(np.float64), scores.astype(np.float64), cls.astype(np.int64)))
        return out

    def _cluster(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        if len(scores) == 0:
            return Detections.empty()
        if self.clustering == "nms":
            keep = nms(boxes, scores, labels, self.nms_iou)
            det = Detections(boxes[keep], scores[keep], labels[keep])
        else:
            det = self._dbscan(boxes, scores, labels)
            if self.clustering == "hybrid" and len(det):
                keep = nms(det.boxes, det.scores, det.labels, self.nms_iou)
                det = Detections(det.boxes[keep], det.scores[keep], det.labels[keep])
        height = det.boxes[:, 3] - det.boxes[:, 1]
        ok = (height >= self.min_height) & (det.scores >= self.confidence_threshold)
        det = Detections(det.boxes[ok], det.scores[ok], det.labels[ok])
        order = np.argsort(-det.scores, kind="stable")[: self.max_detections]
        return Detections(det.boxes[order].astype(np.float32), det.scores[order].astype(np.float32),
                          det.labels[order].astype(np.int64))

    def neighbours(self, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DBSCAN's eps-neighbour pairs: same class and 1 - IoU <= eps (the comparison scikit-learn makes)."""
        i, j, iou = overlapping_pairs(boxes, 1.0 - self.eps, labels)
        ok = (1.0 - iou) <= self.eps
        return i[ok], j[ok]

    def _dbscan(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        cluster = dbscan_labels(len(scores), self.neighbours(boxes, labels), scores, self.min_samples)
        valid = cluster >= 0
        if not valid.any():
            return Detections.empty()
        ids, inv = np.unique(cluster[valid], return_inverse=True)
        w = scores[valid]
        wsum = np.bincount(inv, weights=w)
        count = np.bincount(inv)
        mean_box = np.stack([np.bincount(inv, weights=w * boxes[valid, k]) for k in range(4)], 1) / wsum[:, None]
        conf = wsum if self.confidence_model == "aggregate_cov" else wsum / count
        cls = np.zeros(len(ids), np.int64)
        cls[inv] = labels[valid]
        return Detections(mean_box, conf, cls)
