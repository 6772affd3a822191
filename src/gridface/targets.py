"""GridBox targets: the coverage rasterizer and the bbox encoding, the one place both are defined.

A ground-truth box paints an ellipse of soft coverage onto the output grid (stride ``s``); every cell
it owns regresses the distances from the cell's reference point ``g = (i*s + 0.5, j*s + 0.5)`` to the
box edges, divided by ``BBOX_NORM`` (35, as in DetectNet_v2). ``decode_boxes`` is the exact inverse
used by post-processing, so training targets and predictions share one convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# every backbone's output stride (model.backbone builds them so): the grid the targets are encoded on
STRIDE = 16

BBOX_NORM = 35.0
REFERENCE_OFFSET = 0.5


def reference_points(grid_h: int, grid_w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel reference point of every cell: x of column i is i*stride + 0.5, y of row j is j*stride + 0.5."""
    gx = np.arange(grid_w, dtype=np.float64) * stride + REFERENCE_OFFSET
    gy = np.arange(grid_h, dtype=np.float64) * stride + REFERENCE_OFFSET
    return gx, gy


def decode_boxes(bbox: np.ndarray, stride: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Turn bbox maps ``[B, 4C, h, w]`` into pixel boxes ``[B, C, h, w, 4]`` (x1, y1, x2, y2), clipped (numpy,
    the input's float dtype; a CPU torch tensor is read as an array)."""
    bbox = np.asarray(bbox)
    if not np.issubdtype(bbox.dtype, np.floating):
        bbox = bbox.astype(np.float32)
    b, c4, h, w = bbox.shape
    height, width = image_hw
    t = bbox.reshape(b, c4 // 4, 4, h, w) * bbox.dtype.type(BBOX_NORM)
    gx, gy = (g.astype(bbox.dtype) for g in reference_points(h, w, stride))
    gx, gy = gx.reshape(1, 1, 1, w), gy.reshape(1, 1, h, 1)
    x1 = np.clip(gx - t[:, :, 0], 0, width)
    y1 = np.clip(gy - t[:, :, 1], 0, height)
    x2 = np.minimum(np.maximum(gx + t[:, :, 2], x1), width)
    y2 = np.minimum(np.maximum(gy + t[:, :, 3], y1), height)
    return np.stack([x1, y1, x2, y2], axis=-1)


@dataclass(frozen=True)
class GridBoxTargetEncoder:
    """Rasterize pixel boxes into ``cov``, ``cov_norm`` and ``bbox`` target maps (numpy, vectorised).

    Defaults are TAO FaceDetect's: ellipse centre (0.5, 0.5) of the box, radii equal to the half-size,
    at least ``bbox_min_radius`` cells, 4x4 sub-samples per cell for soft edges, dead zone 0.67.
    """

    num_classes: int = 1
    stride: int = STRIDE
    cov_center_x: float = 0.5
    cov_center_y: float = 0.5
    cov_radius_x: float = 1.0
    cov_radius_y: float = 1.0
    bbox_min_radius: float = 1.0
    deadzone_radius: float = 0.67
    samples_per_cell: int = 4

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = image_hw
        if h % self.stride or w % self.stride:
            raise ValueError(f"input size {w}x{h} must be a multiple of the stride {self.stride}")
        return h // self.stride, w // self.stride

    def __call__(
        self, boxes: np.ndarray, labels: np.ndarray, image_hw: tuple[int, int], ignore: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """boxes ``[N, 4]`` xyxy pixels in the network input, labels ``[N]`` class ids in [0, C).

        ``ignore`` ``[N]`` marks boxes that neither count nor penalise: they own no cell, and the cells of
        their coverage region that no counted box covers are flagged in the ``ignore`` map [C, h, w] (1.0),
        which the loss weighs zero.
        """
        gh, gw = self.grid_size(image_hw)
        c = self.num_classes
        cov = np.zeros((c, gh, gw), np.float32)
        cov_norm = np.zeros((c, gh, gw), np.float32)
        bbox = np.zeros((4 * c, gh, gw), np.float32)
        ignore_map = np.zeros((c, gh, gw), np.float32)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool).reshape(-1)
        if len(ignore) != len(boxes):
            raise ValueError(f"ignore has {len(ignore)} flags for {len(boxes)} boxes")
        non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        for cls in np.unique(labels):
            if not 0 <= cls < c:
                raise ValueError(f"label {cls} outside [0, {c})")
            of_class = (labels == cls) & non_empty
            counted = boxes[of_class & ~ignore]
            if len(counted):
                value, norm, tgt = self._rasterize_class(counted, gh, gw)
                cov[cls], cov_norm[cls], bbox[4 * cls : 4 * cls + 4] = value, norm, tgt
            ignored = boxes[of_class & ignore]
            if len(ignored):
                region = self._coverage(ignored, gh, gw)[0].max(0) > 0
                ignore_map[cls] = (region & (cov[cls] == 0)).astype(np.float32)
        return {"cov": cov, "cov_norm": cov_norm, "bbox": bbox, "ignore": ignore_map}

    def ellipse_radii(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coverage semi-axes in cells, scaled up together until the smaller reaches the minimum."""
        s = self.stride
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        rx = np.maximum(0.1, self.cov_radius_x * w / 2 / s)
        ry = np.maximum(0.1, self.cov_radius_y * h / 2 / s)
        scale = np.maximum(1.0, self.bbox_min_radius / np.minimum(rx, ry))
        return rx * scale, ry * scale

    def _coverage(self, boxes: np.ndarray, gh: int, gw: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Soft coverage ``[n, gh, gw]``: the fraction of k x k sample points of each cell inside each box's
        ellipse; also the ellipses (centre and semi-axes, in cells)."""
        s, k, n = self.stride, self.samples_per_cell, len(boxes)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx = (boxes[:, 0] + self.cov_center_x * w) / s
        cy = (boxes[:, 1] + self.cov_center_y * h) / s
        rx, ry = self.ellipse_radii(boxes)
        px = (np.arange(gw * k) + 0.5) / k
        py = (np.arange(gh * k) + 0.5) / k
        dx2 = ((px[None] - cx[:, None]) / rx[:, None]) ** 2  # [n, gw*k]
        dy2 = ((py[None] - cy[:, None]) / ry[:, None]) ** 2  # [n, gh*k]
        inside = (dy2[:, :, None] + dx2[:, None, :]) <= 1.0
        return inside.reshape(n, gh, k, gw, k).mean(axis=(2, 4)), (cx, cy, rx, ry)

    def _rasterize_class(self, boxes: np.ndarray, gh: int, gw: int):
        s = self.stride
        boxes = boxes[np.argsort(boxes[:, 3], kind="stable")]  # draw order: ascending bottom edge
        n = len(boxes)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        coverage, (cx, cy, rx, ry) = self._coverage(boxes, gh, gw)

        # Dead zone at cell centres: radius (1-d)*r + d*half-size.
        d = self.deadzone_radius
        dzx = (1 - d) * rx + d * (w / 2 / s)
        dzy = (1 - d) * ry + d * (h / 2 / s)
        ccx = np.arange(gw) + 0.5
        ccy = np.arange(gh) + 0.5
        in_dead = (((ccy[None, :, None] - cy[:, None, None]) / dzy[:, None, None]) ** 2
                   + ((ccx[None, None, :] - cx[:, None, None]) / dzx[:, None, None]) ** 2) <= 1.0

        # Sequential painting, resolved without a loop: the last box whose dead zone holds a cell clears
        # it and writes its coverage; every later box overwrites where its coverage >= the current value.
        order = np.arange(n)[:, None, None]
        last_dead = np.where(in_dead.any(0), np.where(in_dead, order, -1).max(0), -1)
        active = order >= last_dead[None]
        value = np.where(active, coverage, -1.0).max(0)
        owner = np.where(active & (coverage == value[None]), order, -1).max(0)
        owned = value > 0
        value = np.where(owned, value, 0.0)

        own = np.where(owned, owner, 0)
        norm = np.where(owned, value / np.maximum(4 * rx[own] * ry[own], 1.0), 0.0)
        gx, gy = reference_points(gh, gw, s)
        gxx, gyy = np.broadcast_to(gx[None], (gh, gw)), np.broadcast_to(gy[:, None], (gh, gw))
        b = boxes[own]  # [gh, gw, 4]
        tgt = np.stack([gxx - b[..., 0], gyy - b[..., 1], b[..., 2] - gxx, b[..., 3] - gyy]) / BBOX_NORM
        tgt = np.where(owned[None], tgt, 0.0)
        return value.astype(np.float32), norm.astype(np.float32), tgt.astype(np.float32)
