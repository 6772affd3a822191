"""GridBox targets for a whole batch in torch, on the batch's device: the numpy encoder's maps, bit for bit.

Why a second encoder: on the GPU data path (``dataset.decode=gpu``) the boxes are on the device after the letterbox
and the augmentation, and a loader worker never sees them. This is :class:`gridface.targets.GridBoxTargetEncoder`
ported to torch for all images of a batch at once: the boxes of every image are concatenated (no padding: an image
with 1,000 faces does not make every image pay for 1,000), each box knows its image, and the sequential painting of
``_rasterize_class`` is resolved per (image, class) group with scatter-max reductions instead of per-class loops.

The geometry runs in float64 with the numpy encoder's order of operations, so every sub-sample point falls on the
same side of every ellipse and the maps equal numpy's exactly (a test); they are cast to float32 at the end, as
numpy does. The numpy encoder stays the definition (``gridface.targets``); this module only imports from it.
"""

from __future__ import annotations

import torch

from gridface.targets import BBOX_NORM, REFERENCE_OFFSET, GridBoxTargetEncoder

# boxes per chunk of the sub-sample test: bounds the [chunk, gh*k, gw*k] temporaries (~150 KB a box at 736x416)
CHUNK = 256


def encode_batch(
    encoder: GridBoxTargetEncoder,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    ignore: torch.Tensor,
    image_index: torch.Tensor,
    batch_size: int,
    image_hw: tuple[int, int],
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``cov``, ``cov_norm``, ``ignore`` ``[B, C, gh, gw]`` and ``bbox`` ``[B, 4C, gh, gw]`` (float32) for the boxes
    of a batch: ``boxes`` ``[M, 4]`` xyxy pixels in the network input, ``labels`` ``[M]`` class ids in [0, C),
    ``ignore`` ``[M]`` ignore flags, ``image_index`` ``[M]`` the image in [0, batch_size) each box belongs to,
    ``valid`` ``[M]`` (optional) boxes to leave out (dropped by clipping, or of a skipped image). Labels are not
    range-checked here (that would wait for the device); the collate checks them on the host.

    Equal to calling the numpy encoder per image and stacking, for the same boxes in the same order.
    """
    gh, gw = encoder.grid_size(image_hw)
    c, s, k = encoder.num_classes, encoder.stride, encoder.samples_per_cell
    device = boxes.device
    f64 = torch.float64
    n_groups = batch_size * c
    cells = gh * gw
    boxes = boxes.to(f64).reshape(-1, 4)
    m = boxes.shape[0]
    labels = labels.reshape(-1).long()
    ignore = ignore.reshape(-1).bool()
    image_index = image_index.reshape(-1).long()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if valid is not None:
        keep = keep & valid.reshape(-1).bool()
    group = image_index * c + labels

    # Draw order: ascending bottom edge within each (image, class) group, ties in the given order (numpy's stable
    # argsort). Two stable sorts: by y2, then by group. A box's position in this order stands for its order in
    # the numpy painting, since only positions within one group are ever compared.
    order = torch.sort(boxes[:, 3], stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    boxes, group, keep, ignore = boxes[order], group[order], keep[order], ignore[order]
    counted = keep & ~ignore
    ignored = keep & ignore
    dummy = torch.full_like(group, n_groups)  # boxes that paint nothing scatter into a spare row
    paint_group = torch.where(counted, group, dummy)
    ignore_group = torch.where(ignored, group, dummy)

    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    cx = (x1 + encoder.cov_center_x * w) / s
    cy = (y1 + encoder.cov_center_y * h) / s
    rx, ry = _ellipse_radii(encoder, w, h)
    coverage = _coverage(cx, cy, rx, ry, gh, gw, k).reshape(m, cells)  # [M, cells], multiples of 1/k^2

    # Dead zone at cell centres: radius (1-d)*r + d*half-size.
    d = encoder.deadzone_radius
    dzx = (1 - d) * rx + d * (w / 2 / s)
    dzy = (1 - d) * ry + d * (h / 2 / s)
    ccx = torch.arange(gw, dtype=f64, device=device) + 0.5
    ccy = torch.arange(gh, dtype=f64, device=device) + 0.5
    ey = (ccy[None, :, None] - cy[:, None, None]) / dzy[:, None, None]
    ex = (ccx[None, None, :] - cx[:, None, None]) / dzx[:, None, None]
    in_dead = ((ey * ey + ex * ex) <= 1.0).reshape(m, cells)

    # Sequential painting without a loop (as numpy's _rasterize_class): the last box of a group whose dead zone
    # holds a cell clears it and writes its coverage; every later box overwrites where its coverage >= the
    # current value. Positions are float64 (exact) so one scatter-max kernel serves every reduction.
    pos = torch.arange(m, dtype=f64, device=device)[:, None].expand(m, cells)
    index = paint_group[:, None].expand(m, cells)
    neg = torch.full((n_groups + 1, cells), -1.0, dtype=f64, device=device)
    last_dead = neg.scatter_reduce(0, index, torch.where(in_dead, pos, -1.0), "amax")
    active = pos >= last_dead[paint_group]
    value = neg.scatter_reduce(0, index, torch.where(active, coverage, -1.0), "amax")
    at_value = active & (coverage == value[paint_group])
    owner = neg.scatter_reduce(0, index, torch.where(at_value, pos, -1.0), "amax")[:n_groups]
    value = value[:n_groups]
    owned = value > 0
    value = torch.where(owned, value, 0.0)
    own = torch.where(owned, owner, 0.0).long()  # [G, cells]: the box (sorted position) each cell regresses

    if m:
        norm = torch.where(owned, value / torch.clamp_min(4 * rx[own] * ry[own], 1.0), 0.0)
        gx = torch.arange(gw, dtype=f64, device=device) * s + REFERENCE_OFFSET
        gy = torch.arange(gh, dtype=f64, device=device) * s + REFERENCE_OFFSET
        gxx = gx[None, :].expand(gh, gw).reshape(cells)
        gyy = gy[:, None].expand(gh, gw).reshape(cells)
        b = boxes[own]  # [G, cells, 4]
        tgt = torch.stack([gxx - b[..., 0], gyy - b[..., 1], b[..., 2] - gxx, b[..., 3] - gyy], dim=1) / BBOX_NORM
        tgt = torch.where(owned[:, None], tgt, 0.0)
    else:
        norm = torch.zeros_like(value)
        tgt = torch.zeros((n_groups, 4, cells), dtype=f64, device=device)

    cov = value.float()
    # Cells of an ignored box's coverage region that no counted box of its class covers.
    zero = torch.zeros((n_groups + 1, cells), dtype=f64, device=device)
    region = zero.scatter_reduce(0, ignore_group[:, None].expand(m, cells), coverage, "amax")[:n_groups] > 0
    ignore_map = (region & (cov == 0)).float()

    shape = (batch_size, c, gh, gw)
    return {
        "cov": cov.reshape(shape),
        "cov_norm": norm.float().reshape(shape),
        "bbox": tgt.float().reshape(batch_size, 4 * c, gh, gw),
        "ignore": ignore_map.reshape(shape),
    }


def _ellipse_radii(encoder: GridBoxTargetEncoder, w: torch.Tensor, h: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``GridBoxTargetEncoder.ellipse_radii`` in torch (same operation order)."""
    s = encoder.stride
    rx = torch.clamp_min(encoder.cov_radius_x * w / 2 / s, 0.1)
    ry = torch.clamp_min(encoder.cov_radius_y * h / 2 / s, 0.1)
    # a tensor division, not ``scalar / tensor`` (torch computes that as reciprocal * scalar: an ulp off numpy)
    scale = torch.clamp_min(torch.full_like(rx, encoder.bbox_min_radius) / torch.minimum(rx, ry), 1.0)
    return rx * scale, ry * scale


def _coverage(cx: torch.Tensor, cy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor, gh: int, gw: int, k: int
              ) -> torch.Tensor:
    """Soft coverage ``[M, gh, gw]`` (float64): the fraction of each cell's k x k sample points inside each
    ellipse, as ``GridBoxTargetEncoder._coverage``; in chunks of boxes to bound the sub-sample temporaries."""
    m, device = cx.shape[0], cx.device
    px = (torch.arange(gw * k, dtype=torch.float64, device=device) + 0.5) / k
    py = (torch.arange(gh * k, dtype=torch.float64, device=device) + 0.5) / k
    out = torch.empty((m, gh, gw), dtype=torch.float64, device=device)
    for a in range(0, m, CHUNK):
        sl = slice(a, min(a + CHUNK, m))
        dx = (px[None] - cx[sl, None]) / rx[sl, None]
        dy = (py[None] - cy[sl, None]) / ry[sl, None]
        inside = ((dy * dy)[:, :, None] + (dx * dx)[:, None, :]) <= 1.0
        n = inside.shape[0]
        out[sl] = inside.reshape(n, gh, k, gw, k).sum(dim=(2, 4), dtype=torch.float64) / (k * k)
    return out
