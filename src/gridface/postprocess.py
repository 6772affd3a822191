"""Turn raw ``{cov, bbox}`` maps into detections: threshold, decode, cluster (DBSCAN, NMS or both).

DBSCAN follows TAO: distance 1 - IoU between cell boxes, coverage as sample weight (a cell is core when
the coverage summed over its eps-neighbourhood reaches ``min_samples``), noise dropped, a cluster's box
the coverage-weighted mean, its confidence the summed (``aggregate_cov``) or mean (``mean_cov``)
coverage. The graph work is vectorised (IoU matrix + connected components) and labels follow
scikit-learn's order exactly, so results can be checked against ``sklearn.cluster.DBSCAN``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torchvision.ops import batched_nms, box_iou

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


def dbscan_labels(dist_ok: np.ndarray, weights: np.ndarray, min_samples: float) -> np.ndarray:
    """DBSCAN on a precomputed neighbourhood matrix (``dist_ok[i, j]``: j within eps of i).

    Returns labels like scikit-learn: clusters numbered in order of their first core point, border
    points joined to the earliest-numbered cluster among their core neighbours, noise -1.
    """
    n = len(weights)
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    core = dist_ok.astype(np.float64) @ weights >= min_samples
    core_idx = np.flatnonzero(core)
    if len(core_idx) == 0:
        return labels
    sub = dist_ok[np.ix_(core_idx, core_idx)]
    _, comp = connected_components(csr_matrix(sub), directed=False)
    # Number components by their lowest core index (sklearn's expansion order).
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, core_idx)
    rank = np.argsort(np.argsort(first))
    labels[core_idx] = rank[comp]
    border = np.flatnonzero(~core)
    if len(border):
        reach = dist_ok[np.ix_(border, core_idx)]
        cand = np.where(reach, labels[core_idx][None, :], np.iinfo(np.int64).max).min(1)
        has = reach.any(1)
        labels[border[has]] = cand[has]
    return labels


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

    @torch.no_grad()
    def __call__(self, cov: torch.Tensor, bbox: torch.Tensor, image_hw: tuple[int, int]) -> list[Detections]:
        """cov ``[B, C, h, w]`` (after sigmoid), bbox ``[B, 4C, h, w]``; image_hw is the network input size."""
        cov = torch.as_tensor(cov).float()
        boxes = decode_boxes(torch.as_tensor(bbox).float(), self.stride, image_hw)  # [B, C, h, w, 4]
        out = []
        for b in range(cov.shape[0]):
            keep = cov[b] > self.coverage_threshold
            keep &= torch.isfinite(cov[b]) & torch.isfinite(boxes[b]).all(-1)
            cls, ys, xs = keep.nonzero(as_tuple=True)
            scores = cov[b][cls, ys, xs]
            cand = boxes[b][cls, ys, xs]
            if len(scores) > self.max_candidates:
                top = scores.topk(self.max_candidates).indices
                cls, scores, cand = cls[top], scores[top], cand[top]
            out.append(self._cluster(cand, scores, cls))
        return out

    def _cluster(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> Detections:
        if len(scores) == 0:
            return Detections.empty()
        if self.clustering == "nms":
            keep = batched_nms(boxes, scores, labels, self.nms_iou)
            det = Detections(boxes[keep].numpy(), scores[keep].numpy(), labels[keep].numpy())
        else:
            det = self._dbscan(boxes, scores, labels)
            if self.clustering == "hybrid" and len(det):
                t = torch.from_numpy
                keep = batched_nms(t(det.boxes), t(det.scores), t(det.labels), self.nms_iou).numpy()
                det = Detections(det.boxes[keep], det.scores[keep], det.labels[keep])
        height = det.boxes[:, 3] - det.boxes[:, 1]
        ok = (height >= self.min_height) & (det.scores >= self.confidence_threshold)
        det = Detections(det.boxes[ok], det.scores[ok], det.labels[ok])
        order = np.argsort(-det.scores, kind="stable")[: self.max_detections]
        return Detections(det.boxes[order].astype(np.float32), det.scores[order].astype(np.float32),
                          det.labels[order].astype(np.int64))

    def _dbscan(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> Detections:
        b_np, s_np, l_np = boxes.double().numpy(), scores.double().numpy(), labels.numpy()
        iou = box_iou(boxes.double(), boxes.double()).numpy()
        # Only cells of one class can be neighbours.
        neighbours = ((1.0 - iou) <= self.eps) & (l_np[:, None] == l_np[None, :])
        cluster = dbscan_labels(neighbours, s_np, self.min_samples)
        valid = cluster >= 0
        if not valid.any():
            return Detections.empty()
        ids, inv = np.unique(cluster[valid], return_inverse=True)
        w = s_np[valid]
        wsum = np.bincount(inv, weights=w)
        count = np.bincount(inv)
        mean_box = np.stack([np.bincount(inv, weights=w * b_np[valid, k]) for k in range(4)], 1) / wsum[:, None]
        conf = wsum if self.confidence_model == "aggregate_cov" else wsum / count
        cls = np.zeros(len(ids), np.int64)
        cls[inv] = l_np[valid]
        return Detections(mean_box, conf, cls)
