"""GridBox output maps for clustering tests and ``scripts/bench_clustering.py``: the cases that make
post-processing slow (every cell above the coverage threshold) and a trained model's busy image."""

from __future__ import annotations

import numpy as np

from gridface.targets import BBOX_NORM, GridBoxTargetEncoder, reference_points

HW = (416, 736)  # a 46 x 26 grid at stride 16


def random_boxes_maps(seed: int, hw: tuple[int, int] = HW) -> tuple[np.ndarray, np.ndarray]:
    """Every cell above the threshold, each regressing its own face of 40-200 px around itself."""
    rng = np.random.default_rng(seed)
    h, w = hw[0] // 16, hw[1] // 16
    cov = rng.uniform(0.01, 1.0, (1, 1, h, w)).astype(np.float32)
    half = rng.uniform(20, 100, (1, 1, h, w)) / BBOX_NORM
    bbox = np.concatenate([half + rng.normal(0, 0.1, (1, 1, h, w)) for _ in range(4)], 1).astype(np.float32)
    return cov, bbox


def one_face_maps(seed: int, sigma_px: float, box: tuple[float, float, float, float] = (100.0, 30.0, 500.0, 400.0),
                  hw: tuple[int, int] = HW) -> tuple[np.ndarray, np.ndarray]:
    """Every cell above the threshold and regressing the same face, each with its own error of ``sigma_px``
    (an under-trained model, or a face filling the frame): up to 700k neighbour pairs."""
    rng = np.random.default_rng(seed)
    h, w = hw[0] // 16, hw[1] // 16
    gx, gy = reference_points(h, w, 16)
    gx, gy = np.broadcast_to(gx.reshape(1, w), (h, w)), np.broadcast_to(gy.reshape(h, 1), (h, w))
    x1, y1, x2, y2 = box
    bbox = np.stack([gx - x1, gy - y1, x2 - gx, y2 - gy])[None] / BBOX_NORM
    bbox = bbox + rng.normal(0, sigma_px / BBOX_NORM, bbox.shape)
    cov = rng.uniform(0.3, 1.0, (1, 1, h, w))
    return cov.astype(np.float32), bbox.astype(np.float32)


def busy_image_maps(seed: int, hw: tuple[int, int] = HW) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's own targets for 12 faces of 20-160 px: what a trained model outputs on a busy image."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(20, 160, (12, 1))
    xy = rng.uniform([0, 0], [hw[1] - 160, hw[0] - 160], (12, 2))
    boxes = np.concatenate([xy, xy + size], 1)
    t = GridBoxTargetEncoder()(boxes, np.zeros(12), hw)
    return t["cov"][None].astype(np.float32), t["bbox"][None].astype(np.float32)
