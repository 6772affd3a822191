"""Turn raw ``{cov, bbox}`` maps into detections: threshold, decode, cluster (DBSCAN, NMS or both).

DBSCAN follows TAO: distance 1 - IoU between cell boxes, coverage as sample weight (a cell is core when the coverage
summed over its eps-neighbourhood reaches ``min_samples``), noise dropped, a cluster's box the coverage-weighted
mean. Its score (``score``) is by default ``confidence``: the highest sigmoid coverage among its cells, a number in
[0, 1] a user can threshold; ``aggregate`` is TAO's, the summed (``aggregate_cov``, which exceeds 1) or mean
(``mean_cov``) coverage (``confidence_model``). NMS keeps cells, whose score is their coverage either way.
``score_threshold`` is the model's own operating point on that score, chosen on validation at training time
(F1-best, :func:`gridface.evaluation.ap.f1_best_threshold`) and recorded with these settings: ``Detector`` and
``gridface.infer`` apply it; evaluation, which ranks every box, does not. Labels follow scikit-learn's order
exactly, so results can be checked against ``sklearn.cluster.DBSCAN``; NMS keeps what torchvision's ``batched_nms``
keeps. The clustering itself is :mod:`gridface.box_clustering` (compiled loops), imported on first use or by
:meth:`GridBoxDecoder.warm_up`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gridface.targets import STRIDE, decode_boxes
from gridface.utils.validate import ConfigError, check_number

CLUSTERING = ("dbscan", "nms", "hybrid")
CONFIDENCE = ("aggregate_cov", "mean_cov")
SCORES = ("confidence", "aggregate")


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


def check_postprocess_values(pp: Mapping[str, Any]) -> None:
    """Value ranges of the post-processing keys that are set (None: the model's own value), one
    :class:`~gridface.utils.validate.ConfigError` naming the key: what every stage checks first and what
    :class:`GridBoxDecoder` checks of its values."""
    for key, choices in (("clustering", CLUSTERING), ("confidence_model", CONFIDENCE), ("score", SCORES)):
        if pp.get(key) is not None and pp[key] not in choices:
            raise ConfigError(f"postprocess.{key} = '{pp[key]}': must be one of {', '.join(choices)}")
    check_number("postprocess.coverage_threshold", pp.get("coverage_threshold"), 0, 1)
    check_number("postprocess.dbscan_eps", pp.get("dbscan_eps"), 0, 1, low_open=True)
    check_number("postprocess.dbscan_min_samples", pp.get("dbscan_min_samples"), 0)
    check_number("postprocess.nms_iou_threshold", pp.get("nms_iou_threshold"), 0, 1)
    check_number("postprocess.confidence_threshold", pp.get("confidence_threshold"), 0)
    check_number("postprocess.score_threshold", pp.get("score_threshold"), 0)
    check_number("postprocess.minimum_bounding_box_height", pp.get("minimum_bounding_box_height"), 0)


class GridBoxDecoder:
    """Post-processing of a batch of GridBox outputs into per-image :class:`Detections`. Its keyword defaults are the
    post-processing defaults (TAO's): :func:`decoder_defaults` reads them for the code that needs them without a
    decoder (the DeepStream config), and ``configs/postprocess/dbscan.yaml`` repeats them (a test keeps them equal)."""

    def __init__(
        self,
        stride: int = STRIDE,
        coverage_threshold: float = 0.004,
        clustering: str = "dbscan",
        dbscan_eps: float = 0.15,
        dbscan_min_samples: float = 1.0,
        confidence_model: str = "aggregate_cov",
        score: str = "confidence",
        score_threshold: float | None = None,
        nms_iou_threshold: float = 0.3,
        confidence_threshold: float = 0.0,
        minimum_bounding_box_height: float = 4.0,
        max_candidates: int = 4000,
        max_detections: int = 1000,
    ) -> None:
        check_postprocess_values({k: v for k, v in locals().items() if k != "self"})
        summed = clustering != "nms" and score == "aggregate" and confidence_model == "aggregate_cov"
        if confidence_threshold > 1.0 and not summed:  # every detection would be dropped, silently
            raise ValueError(f"postprocess.confidence_threshold = {confidence_threshold:g}: the scores "
                             f"(postprocess.score={score}, clustering={clustering}) lie in [0, 1], so no detection "
                             "passes; give a value in [0, 1] (only score=aggregate with confidence_model="
                             "aggregate_cov, TAO's summed coverage, exceeds 1)")
        self.stride = stride
        self.coverage_threshold = coverage_threshold
        self.clustering = clustering
        self.eps = dbscan_eps
        self.min_samples = dbscan_min_samples
        self.confidence_model = confidence_model
        self.score = score
        self.score_threshold = score_threshold  # recorded, not applied here: see the module docstring
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

    @staticmethod
    def warm_up() -> threading.Thread:
        """Import and load the compiled clustering in a background thread (numba and LLVM, about 0.6 s), so that
        it overlaps the model's loading instead of delaying the first image; returns the thread. A decode that
        comes first waits for it (import and compile locks)."""

        def load() -> None:
            from gridface.box_clustering import warm_up

            warm_up()

        thread = threading.Thread(target=load, name="clustering-warm-up", daemon=True)
        thread.start()
        return thread

    def _cluster(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        from gridface.box_clustering import nms

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

    def _dbscan(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        from gridface.box_clustering import dbscan_boxes

        cluster = dbscan_boxes(boxes, scores, labels, self.eps, self.min_samples)
        valid = cluster >= 0
        if not valid.any():
            return Detections.empty()
        ids, inv = np.unique(cluster[valid], return_inverse=True)
        w = scores[valid]
        wsum = np.bincount(inv, weights=w)
        count = np.bincount(inv)
        mean_box = np.stack([np.bincount(inv, weights=w * boxes[valid, k]) for k in range(4)], 1) / wsum[:, None]
        if self.score == "confidence":
            conf = np.zeros(len(ids))
            np.maximum.at(conf, inv, w)
        else:
            conf = wsum if self.confidence_model == "aggregate_cov" else wsum / count
        cls = np.zeros(len(ids), np.int64)
        cls[inv] = labels[valid]
        return Detections(mean_box, conf, cls)


def decoder_defaults() -> dict[str, Any]:
    """:class:`GridBoxDecoder`'s post-processing settings and their defaults (``stride`` is the network's, not one)."""
    params = inspect.signature(GridBoxDecoder.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not p.empty and name != "stride"}
