"""Turn raw ``{cov, bbox}`` maps into detections: threshold, decode, cluster (DBSCAN, NMS or both).

DBSCAN follows TAO: distance 1 - IoU between cell boxes, coverage as sample weight (a cell is core when
the coverage summed over its eps-neighbourhood reaches ``min_samples``), noise dropped, a cluster's box
the coverage-weighted mean, its confidence the summed (``aggregate_cov``) or mean (``mean_cov``)
coverage. Labels follow scikit-learn's order exactly, so results can be checked against
``sklearn.cluster.DBSCAN``.

Numpy only (no torch), so a deployed ONNX model needs neither torch nor torchvision. Neighbours are
found without an all-pairs IoU matrix (see :func:`overlapping_pairs`); IoU is computed for candidate pairs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridface.targets import decode_boxes

CLUSTERING = ("dbscan", "nms", "hybrid")
CONFIDENCE = ("aggregate_cov", "mean_cov")
NMS_GREEDY_FIRST = 8  # NMS: kept boxes before trying the pairs plan on the rest
NMS_MAX_CANDIDATES = 60_000  # ... which gives way to the greedy loop above this many candidate pairs
NMS_HEAD = 128  # NMS: boxes the greedy loop takes at once, at most ...
NMS_SCATTERED = 16  # ... once the boxes it keeps remove fewer than this many boxes each
NMS_GROW = 8  # ... growing with the kept count: NMS_GROW boxes per box kept so far
CROWDED_CELL = 8  # clique groups: a grid cell this full is covered by leader balls, at most MAX_LEADERS of them
MAX_LEADERS = 256
LEADER_BATCH = 32


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


def range_pairs(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) with ``start[a] <= b < end[a]``."""
    counts = np.maximum(end - start, 0)
    a = np.repeat(np.arange(len(start)), counts)
    b = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - start, counts)
    return a, b


def overlapping_pairs(boxes: np.ndarray, min_iou: float, labels: np.ndarray | None = None,
                      max_candidates: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """All pairs ``i < j`` (same label) with IoU >= ``min_iou`` (up to rounding: callers make the exact
    comparison), and their IoU, without an n x n matrix. ``min_iou <= 0`` pairs everything.

    IoU >= t needs the sizes s = max(w, h) within a factor 1/t, and |x1_i - x1_j|, |y1_i - y1_j| <= (1 - t) times
    the larger size. So boxes go into size bins a factor 1/t wide (a pair lies in one bin or two neighbouring
    ones; each box is also entered as a guest in the next bin up), each bin into columns (1 - t) x its largest
    size wide by x1; entries are sorted by (bin, column, y1), and an entry's candidates are the entries of its
    own column and the next one whose y1 lies within reach, found by binary search. Near-duplicate clustering
    (t = 0.85) then computes IoU for a few candidates per box instead of hundreds."""
    n = len(boxes)
    empty = np.zeros(0, np.int64)
    cols = tuple(np.ascontiguousarray(boxes[:, k], np.float64) for k in range(4))
    if min_iou <= 0:
        i, j = np.triu_indices(n, 1)
        if labels is not None:
            same = labels[i] == labels[j]
            i, j = i[same], j[same]
        return i, j, pair_iou(cols, i, j)
    x1, y1, x2, y2 = cols
    w, h = x2 - x1, y2 - y1
    box = np.flatnonzero(np.minimum(w, h) > 0)  # a box without area overlaps nothing
    if len(box) < 2:
        return empty, empty, np.zeros(0)
    log_size = np.log(np.maximum(w, h)[box])
    step = max(-np.log(min_iou), 1e-6)
    size_bin = np.floor((log_size - log_size.min()) / step).astype(np.int64)
    per_label = int(size_bin.max()) + 2  # room for the top bin's guests
    group = size_bin if labels is None else (labels[box] - labels.min()) * per_label + size_bin
    # entries: every box at home in its bin, and as a guest in the next bin up
    idx = np.concatenate([box, box])
    group = np.concatenate([group, group + 1])
    guest = np.repeat([False, True], len(box))
    top_size = np.exp(log_size.min() + (group % per_label + 1) * step)  # the bin's largest size
    reach = (1.0 - min_iou) * (1 + 1e-9) * top_size + 1e-6
    ex1, ey1 = x1[idx] - x1[box].min(), y1[idx] - y1[box].min()
    column = np.floor(ex1 / reach)
    span = float(ey1.max()) + 4 * float(reach.max()) + 1.0  # keeps columns apart in the key
    group_span = (float(column.max()) + 2) * span  # keeps groups apart
    keys = group * group_span + column * span + ey1
    order = np.argsort(keys)
    keys, reach = keys[order], reach[order]
    m = len(keys)
    # Two windows per entry (queries 0..m-1, then m..2m-1): later entries of its own column with y1 within
    # reach (each pair once), and the next column's entries with y1 within reach either side.
    end = np.searchsorted(keys, np.concatenate([keys + reach, keys + span + reach]), side="right")
    start = np.concatenate([np.arange(1, m + 1), np.searchsorted(keys, keys + span - reach, side="left")])
    if max_candidates is not None and int(np.maximum(end - start, 0).sum()) > max_candidates:
        return None  # the caller has a better plan for crowded boxes
    a, b = range_pairs(start, end)
    a[a >= m] -= m
    a, b = order[a], order[b]
    keep = ~(guest[a] & guest[b])  # two guests meet again in their home bin
    a, b = a[keep], b[keep]
    i, j = idx[a], idx[b]
    iou = pair_iou(cols, i, j)
    ok = iou >= min_iou - 1e-9
    i, j, iou = i[ok], j[ok], iou[ok]
    swap = i > j
    return np.where(swap, j, i), np.where(swap, i, j), iou


def component_roots(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (i, j) over ``n`` nodes: each node's component root, the
    component's lowest index. Roots are hooked under smaller roots and paths halved until no edge spans two
    trees: a few vectorised rounds, cheaper than building a scipy sparse graph for a thousand nodes."""
    parent = np.arange(n)
    while len(i):
        ri, rj = parent[i], parent[j]
        spans = ri != rj
        if not spans.any():
            break
        i, j, ri, rj = i[spans], j[spans], ri[spans], rj[spans]
        parent[np.maximum(ri, rj)] = np.minimum(ri, rj)  # any smaller root will do: pointers only go down
        while True:
            up = parent[parent]
            if (up == parent).all():
                break
            parent = up
    return parent


def hashed(parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """One uint64 key per row of integer ``parts`` (wrapping arithmetic): equal parts, equal keys; a collision
    merges two cells, which the callers' distance checks catch."""
    key = np.zeros(len(parts[0]), np.uint64)
    for part in parts:
        key = key * np.uint64(0x9E3779B97F4A7C15) + part.astype(np.int64).astype(np.uint64)
    return key


def grid_cells(boxes: np.ndarray, labels: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Two nested cell keys per box: fine cells (log width, log height, x1 and y1 in steps of eps / 8 relative to
    the box size) and the coarse cells eight fine steps wide that contain them. Boxes of one fine cell are close in
    1 - IoU; a coarse cell holding many boxes marks a crowd (many cells regressing one face)."""
    step = eps / 8
    x1, y1 = boxes[:, 0], boxes[:, 1]
    lw = np.floor(np.log(np.maximum(boxes[:, 2] - x1, 1e-3)) / step)
    lh = np.floor(np.log(np.maximum(boxes[:, 3] - y1, 1e-3)) / step)
    # x1, y1 measured in the coarse size bin's width and height, so that a coarse cell is exactly 8 fine ones
    kx = np.floor(x1 / (step * np.exp(np.floor(lw / 8) * 8 * step)))
    ky = np.floor(y1 / (step * np.exp(np.floor(lh / 8) * 8 * step)))
    fine = (labels, lw, lh, kx, ky)
    return hashed(fine), hashed((labels, *(np.floor(p / 8) for p in fine[1:])))


def clique_groups(boxes: np.ndarray, labels: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes grouped so that every box lies within ``eps / 2`` (1 - IoU) of its group's representative: since
    1 - IoU is a metric (the Jaccard distance), each group is a clique of DBSCAN neighbours. Returns each box's
    group, each group's representative box and its radius (the largest distance to it).

    Crowded coarse cells are covered greedily by balls of radius eps / 2 (at most ``MAX_LEADERS``); the other
    boxes are grouped by fine cell, a fine cell whose boxes spread wider than eps / 2 being split into single
    boxes. The grouping decides the speed, never a label."""
    n = len(boxes)
    cols = tuple(np.ascontiguousarray(boxes[:, k], np.float64) for k in range(4))
    has_area = np.minimum(cols[2] - cols[0], cols[3] - cols[1]) > 0
    half = eps / 2 - 1e-9
    fine, coarse = grid_cells(boxes, labels, eps)
    group = np.full(n, -1, np.int64)
    reps, radius = [], []
    _, cell, count = np.unique(coarse, return_inverse=True, return_counts=True)
    cell = cell.reshape(-1)
    crowded = np.flatnonzero(has_area & (count[cell] >= CROWDED_CELL))
    todo = crowded[np.lexsort((cell[crowded], -count[cell[crowded]]))]  # the most crowded cells first
    while len(todo) and len(reps) < MAX_LEADERS:
        # A batch of candidate leaders (each the first box left in its cell) against every box left at once;
        # then, in order, a candidate leads unless an earlier leader's ball took it: the sequential greedy
        # cover, vectorised per batch.
        heads = np.flatnonzero(np.concatenate([[True], cell[todo[1:]] != cell[todo[:-1]]]))[:LEADER_BATCH]
        lead = todo[heads]
        dist = 1.0 - pair_iou(cols, lead[:, None], todo[None, :])
        inside = (dist <= half) & (labels[lead][:, None] == labels[todo][None, :])
        taken = np.zeros(len(todo), bool)
        for c, at in enumerate(heads):
            if taken[at] or len(reps) >= MAX_LEADERS:
                continue
            ball = inside[c] & ~taken
            group[todo[ball]] = len(reps)
            reps.append(lead[c])
            radius.append(float(dist[c][ball].max()))
            taken |= ball
        todo = todo[~taken]
    rest = np.flatnonzero(group < 0)
    key = fine[rest]
    # alone in its coarse cell, or without area (it overlaps nothing): a group of its own
    lone = ~has_area[rest] | (count[cell[rest]] == 1)
    key[lone] = np.arange(len(rest), dtype=np.uint64)[lone] * np.uint64(0xD6E8FEB86659FD93)
    _, first, sub = np.unique(key, return_index=True, return_inverse=True)
    sub = sub.reshape(-1)
    dist = 1.0 - pair_iou(cols, rest, rest[first][sub])
    spread = np.zeros(len(first))
    np.maximum.at(spread, sub, dist)
    tight = spread[sub] <= half
    _, ids = np.unique(np.where(tight, sub, len(first) + np.arange(len(rest))), return_inverse=True)
    group[rest] = len(reps) + ids.reshape(-1)
    rep_of = np.zeros(int(group.max()) + 1, np.int64)
    rep_of[: len(reps)] = reps
    rep_of[group[rest]] = np.where(tight, rest[first][sub], rest)
    r = np.zeros(len(rep_of))
    r[: len(reps)] = radius
    np.maximum.at(r, group[rest], np.where(tight, dist, 0.0))
    return group, rep_of, r


def dbscan_boxes(boxes: np.ndarray, weights: np.ndarray, labels: np.ndarray, eps: float, min_samples: float
                 ) -> np.ndarray:
    """DBSCAN of ``boxes`` (same class only) under distance 1 - IoU, ``weights`` as sample weights: a box is core
    when the weight within ``eps`` (itself included) reaches ``min_samples``.

    Returns labels like scikit-learn: clusters numbered in order of their first core point, border points joined
    to the earliest-numbered cluster among their core neighbours, noise -1.

    Work is done between clique groups (:func:`clique_groups`), not between boxes: by the triangle inequality two
    groups are wholly neighbours, wholly apart, or "mixed". Boxes of mixed groups are compared one by one only
    where that can change a label: a core decision the groups leave open, two core groups not yet connected, a
    border box. So a grid of cells all regressing one face (hundreds of thousands of neighbour pairs) costs
    about what a few separate faces do."""
    n = len(boxes)
    out = np.full(n, -1, np.int64)
    if n == 0:
        return out
    weights = np.asarray(weights, np.float64)
    cols = tuple(np.ascontiguousarray(boxes[:, c], np.float64) for c in range(4))
    group, rep, radius = clique_groups(boxes, labels, eps)
    k = len(rep)
    members = np.argsort(group, kind="stable")
    size = np.bincount(group, minlength=k)
    start = np.cumsum(size) - size

    gi, gj, iou = overlapping_pairs(boxes[rep], 1.0 - eps - 2 * float(radius.max()) - 1e-9, labels[rep])
    dist, spread = 1.0 - iou, radius[gi] + radius[gj]
    near = dist - spread <= eps + 1e-9
    gi, gj, dist, spread = gi[near], gj[near], dist[near], spread[near]
    full = dist + spread <= eps - 1e-9
    mixed = ~full

    def neighbours_between(pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box pairs within eps between the groups of the mixed group pairs ``pick``."""
        ki, kj = gi[pick], gj[pick]
        if not len(ki):
            return ki, kj
        per_pair = size[ki] * size[kj]
        p = np.repeat(np.arange(len(ki)), per_pair)
        t = np.arange(int(per_pair.sum())) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
        a = members[start[ki][p] + t // size[kj][p]]
        b = members[start[kj][p] + t % size[kj][p]]
        ok = (1.0 - pair_iou(cols, a, b)) <= eps  # the comparison scikit-learn makes
        return a[ok], b[ok]

    def per_group_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(gi[mask], values[gj[mask]], k) + np.bincount(gj[mask], values[gi[mask]], k)

    # 1. Core: the own group and wholly-neighbouring groups give a lower bound, mixed groups an upper one.
    group_weight = np.bincount(group, weights, k)
    lower = group_weight + per_group_sum(group_weight, full)
    upper = lower + per_group_sum(group_weight, mixed)
    undecided = (lower < min_samples) & (upper >= min_samples)
    a, b = neighbours_between(mixed & (undecided[gi] | undecided[gj]))
    reach = lower[group] + np.bincount(a, weights[b], n) + np.bincount(b, weights[a], n)
    core = reach >= min_samples
    if not core.any():
        return out
    core_idx = np.flatnonzero(core)
    first_core = np.full(k, n, np.int64)
    np.minimum.at(first_core, group[core_idx], core_idx)
    has_core = first_core < n

    # 2. Clusters: connected core boxes. A group's core boxes are connected; so are two groups' when wholly
    # neighbours, or when their representatives are core neighbours; other mixed pairs are searched box by box
    # only while their groups are still apart.
    both = has_core[gi] & has_core[gj]
    reps_link = mixed & core[rep[gi]] & core[rep[gj]] & (dist <= eps)
    src = [core_idx, first_core[gi[full & both]], rep[gi[reps_link]]]
    dst = [first_core[group[core_idx]], first_core[gj[full & both]], rep[gj[reps_link]]]
    root = component_roots(n, np.concatenate(src), np.concatenate(dst))
    apart = np.flatnonzero(mixed & both & ~reps_link)
    apart = apart[root[first_core[gi[apart]]] != root[first_core[gj[apart]]]]
    if len(apart):
        a, b = neighbours_between(apart)
        linked = core[a] & core[b]
        root = component_roots(n, np.concatenate([*src, a[linked]]), np.concatenate([*dst, b[linked]]))
    # A component's root is its lowest index, so numbering roots in order numbers the clusters by their first
    # core point (sklearn's expansion order).
    _, rank = np.unique(root[core_idx], return_inverse=True)
    out[core_idx] = rank

    # 3. Border boxes join the earliest-numbered cluster among their core neighbours.
    big = np.iinfo(np.int64).max
    group_label = np.full(k, big, np.int64)
    group_label[has_core] = out[first_core[has_core]]
    best = group_label.copy()
    np.minimum.at(best, gi[full], group_label[gj[full]])
    np.minimum.at(best, gj[full], group_label[gi[full]])
    best = best[group]
    has_border = np.bincount(group, ~core, k) > 0
    a, b = neighbours_between(mixed & ((has_border[gi] & has_core[gj]) | (has_border[gj] & has_core[gi])))
    for src, dst in ((a, b), (b, a)):
        m = core[src] & ~core[dst]
        np.minimum.at(best, dst[m], out[src[m]])
    border = ~core & (best < big)
    out[border] = best[border]
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy per-class NMS as torchvision's ``batched_nms``: indices kept, by decreasing score; a box is
    suppressed by a kept box of its class with IoU > ``iou_threshold``.

    The greedy loop keeps a box and drops what it overlaps, one vectorised pass per kept box: short where boxes
    crowd. When after ``NMS_GREEDY_FIRST`` kept boxes it still has many rounds to go (scattered boxes, as an
    under-trained model gives: a thousand kept), the rest is greedy NMS on the boxes left, resolved from their
    overlapping pairs in a few vectorised rounds (:func:`nms_from_pairs`), unless the neighbour search finds too
    many candidates, where the loop goes on."""
    order = np.argsort(-scores, kind="stable")
    if len(order) < 2:
        return order
    offset = (labels.astype(np.float64) * (float(boxes.max()) + 1.0))[:, None] if labels.max() > 0 else 0.0
    b = (boxes + offset)[order]
    cols = tuple(np.ascontiguousarray(b[:, k]) for k in range(4))
    alive = np.arange(len(order))
    keep: list[int] = []
    tried_pairs = iou_threshold <= 0  # at 0 every pair overlaps: the loop it is
    rate = float("inf")  # boxes the last round removed per box it kept
    while len(alive):
        removed_each = (len(order) - len(alive)) / max(len(keep), 1)  # boxes gone per kept box so far
        if len(keep) >= NMS_GREEDY_FIRST and not tried_pairs and len(alive) > NMS_GREEDY_FIRST * removed_each:
            tried_pairs = True  # at this rate the loop has many more rounds to go
            left = order[alive]  # still in score order
            pairs = overlapping_pairs(boxes[left], iou_threshold, labels[left], max_candidates=NMS_MAX_CANDIDATES)
            kept_left = None if pairs is None else nms_from_pairs(np.arange(len(left)), *pairs, iou_threshold)
            if kept_left is not None:
                return np.concatenate([order[np.asarray(keep, np.int64)], left[kept_left]])
        # Where each kept box takes few others with it (scattered boxes), the next few boxes in score order go at
        # once: greedy among themselves on their small IoU matrix, then the kept ones drop what they overlap in one
        # pass. Boxes after the head are outranked by every head box, so this is the one-box-at-a-time loop's
        # result. Where boxes crowd (faces), one box a round is already few rounds.
        before = len(alive)
        scattered = len(keep) >= NMS_GREEDY_FIRST and rate < NMS_SCATTERED
        size = min(NMS_HEAD, NMS_GROW * len(keep)) if scattered else 1
        if size == 1:
            k, rest = alive[0], alive[1:]
            keep.append(int(k))
            alive = rest[pair_iou(cols, k, rest) <= iou_threshold]
            rate = before - len(alive)
            continue
        head, rest = alive[:size], alive[size:]
        kept = head[greedy_keep(pair_iou(cols, head[:, None], head[None, :]) > iou_threshold)]
        keep.extend(kept.tolist())
        alive = rest[(pair_iou(cols, kept[:, None], rest[None, :]) <= iou_threshold).all(0)]
        rate = (before - len(alive)) / len(kept)  # boxes gone per box kept, in this round
    return order[np.asarray(keep, np.int64)]


def greedy_keep(over: np.ndarray) -> np.ndarray:
    """Greedy NMS on a small score-ordered ``over`` matrix (``over[i, j]``: box i would suppress box j), in rounds:
    a box is suppressed when a kept better box overlaps it, kept when every better box that overlaps it is
    suppressed. The first undecided box is always decided, so it ends; a few rounds where boxes are scattered."""
    better = np.triu(over, 1)  # better[i, j]: i outranks j and overlaps it
    state = np.zeros(len(over), np.int8)  # 0 undecided, 1 kept, 2 suppressed
    while True:
        undecided = state == 0
        if not undecided.any():
            return np.flatnonzero(state == 1)
        by_kept = better[state == 1].any(0)
        waits = better[undecided].any(0)
        state[undecided & by_kept] = 2
        state[undecided & ~by_kept & ~waits] = 1


def nms_from_pairs(order: np.ndarray, i: np.ndarray, j: np.ndarray, iou: np.ndarray, iou_threshold: float,
                   max_rounds: int = 64) -> np.ndarray | None:
    """Greedy NMS from the overlapping pairs: a box is kept when every higher-scored box that overlaps it by more
    than the threshold is suppressed, suppressed when one of them is kept. Each round decides every box whose
    overlapping betters are all decided; None after ``max_rounds`` (a long chain: the loop does it instead)."""
    n = len(order)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    over = iou > iou_threshold
    hi, lo = np.where(rank[i] < rank[j], i, j)[over], np.where(rank[i] < rank[j], j, i)[over]  # hi outranks lo
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 suppressed
    for _ in range(max_rounds):
        undecided = state == 0
        if not undecided.any():
            return order[state[order] == 1]
        by_kept = np.zeros(n, bool)
        by_kept[lo[state[hi] == 1]] = True
        waits = np.zeros(n, bool)
        waits[lo[state[hi] == 0]] = True
        state[undecided & by_kept] = 2
        state[undecided & ~by_kept & ~waits] = 1
    return None


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

    def _dbscan(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        cluster = dbscan_boxes(boxes, scores, labels, self.eps, self.min_samples)
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
