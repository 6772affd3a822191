"""WIDER FACE easy / medium / hard AP, computed exactly as the official evaluation tool counts.

The protocol (see ``shared/data/README.md``): IoU with the "+1 pixel" convention; scores min-max
normalised over every detection of the run; 1000 thresholds; a detection whose best-IoU face
(IoU >= 0.5) is outside the setting's ``gt_list`` is neither hit nor false positive; recall counts
only the setting's faces; AP is the VOC all-point area under the interpolated PR curve.

Unlike a literal port, the matching is vectorised: per image one IoU matrix, then all images and
thresholds at once with sorting and ``searchsorted`` (a face counts as recalled from the highest
score among the detections that hit it). Where the official tool is fragile this one is robust:
detection lines in any order (sorted by score here), an image without a prediction file (its faces
count as misses, with a warning naming it), all scores equal (no division by zero), malformed lines
(an error naming file and line).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gridface.data.sample import LabelError
from gridface.evaluation.ap import average_precision

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
THRESHOLDS = 1000
SIZE_BUCKETS = (0, 10, 20, 40, 80, 160, float("inf"))


@dataclass
class WiderGroundTruth:
    """Per image (in the official order): event, name (no extension), boxes ``x y w h`` and, per
    setting, the 0-based indices of the faces that count."""

    events: list[str]
    names: list[str]
    boxes: list[np.ndarray]
    settings: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def load_ground_truth(path: str | Path) -> WiderGroundTruth:
    """Read the official ``.mat`` files (a folder holding ``wider_face_val.mat`` and
    ``wider_{easy,medium,hard}_val.mat``) or ``wider_face_val_bbx_gt.txt``.

    The text layout has no easy/medium/hard lists (they come only with the ``.mat`` files), so from it
    one setting, ``all``, counts every face not flagged invalid."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "wider_face_val.mat").is_file():
        return _load_mat(path)
    if path.is_dir() and (path / "wider_face_val_bbx_gt.txt").is_file():
        path = path / "wider_face_val_bbx_gt.txt"
    if path.is_file() and path.suffix == ".txt":
        return _load_txt(path)
    raise FileNotFoundError(
        f"WIDER FACE ground truth not found at {path}: give the folder with the official "
        "wider_face_val.mat and wider_{easy,medium,hard}_val.mat (from the evaluation tool, eval_tools.zip) "
        "or wider_face_val_bbx_gt.txt (wider_face_split.zip)")


def _load_mat(folder: Path) -> WiderGroundTruth:
    from scipy.io import loadmat

    main = loadmat(str(folder / "wider_face_val.mat"))
    events, names, boxes = [], [], []
    per_event_files = []
    for e in range(len(main["event_list"])):
        event = str(main["event_list"][e][0][0])
        files = main["file_list"][e][0]
        bbx = main["face_bbx_list"][e][0]
        per_event_files.append(len(files))
        for j in range(len(files)):
            events.append(event)
            names.append(str(files[j][0][0]))
            boxes.append(np.asarray(bbx[j][0], np.float64).reshape(-1, 4))
    gt = WiderGroundTruth(events, names, boxes)
    for setting in SETTINGS:
        f = folder / f"wider_{setting}_val.mat"
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing: the official setting files come together")
        lists = loadmat(str(f))["gt_list"]
        keep = []
        for e, n_files in enumerate(per_event_files):
            for j in range(n_files):
                keep.append(np.asarray(lists[e][0][j][0], np.int64).reshape(-1) - 1)
        gt.settings[setting] = keep
    return gt


def _load_txt(path: Path) -> WiderGroundTruth:
    from gridface.data.parsers import read_widerface_txt

    samples = read_widerface_txt(path, path.parent, keep_invalid=False, check_images=False)
    events = [s.image.parent.name for s in samples]
    names = [s.image.stem for s in samples]
    boxes = [np.concatenate([s.boxes[:, :2], s.boxes[:, 2:] - s.boxes[:, :2]], 1).astype(np.float64)
             for s in samples]
    valid = [np.flatnonzero(~(s.ignore)) for s in samples]
    return WiderGroundTruth(events, names, boxes, {"all": valid})


def parse_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """``<image name>``, ``<count>``, then ``x y w h score`` lines. Returns the name and ``[k, 5]``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise LabelError(f"{path}:{len(lines) + 1}: expected the image name and the detection count")
    name = lines[0].strip().split("/")[-1]
    try:
        count = int(lines[1].strip() or 0)
    except ValueError:
        raise LabelError(f"{path}:2: expected the detection count, got '{lines[1].strip()}'") from None
    body = [ln for ln in lines[2:] if ln.strip()]
    try:
        values = np.array(" ".join(body).split(), np.float64)
    except ValueError:
        values = None
    if values is None or values.size != 5 * len(body):
        for k, ln in enumerate(lines[2:], 3):
            parts = ln.split()
            if parts and (len(parts) != 5 or not all(_is_float(p) for p in parts)):
                raise LabelError(f"{path}:{k}: expected 'x y w h score', got '{ln.strip()}'")
    dets = values.reshape(-1, 5)
    if len(dets) != count:
        warnings.warn(f"{path}: header says {count} detections, file has {len(dets)}; using the lines",
                      stacklevel=2)
    return name, dets


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_predictions(folder: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Read a submission folder ``<event>/<image>.txt`` into ``{(event, image name): [k, 5]}``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"predictions folder not found: {folder}")
    preds = {}
    for f in sorted(folder.glob("*/*.txt")):
        _, dets = parse_prediction_file(f)
        preds[(f.parent.name, f.stem)] = dets
    if not preds:
        raise FileNotFoundError(f"{folder}: no <event>/<image>.txt prediction files")
    return preds


def normalise_scores(preds: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """Official min-max normalisation over all detections (its running min starts at 1 and max at 0)."""
    scores = [d[:, 4] for d in preds.values() if len(d)]
    lo = min(1.0, *(float(s.min()) for s in scores)) if scores else 0.0
    hi = max(0.0, *(float(s.max()) for s in scores)) if scores else 1.0
    diff = hi - lo
    out = {}
    for k, d in preds.items():
        d = d.copy()
        d[:, 4] = (d[:, 4] - lo) / diff if diff > 0 else 1.0
        out[k] = d
    return out


def iou_plus_one(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """The official ``bbox_overlaps``: areas and intersections counted with +1 pixel."""
    p, g = pred_xyxy[:, None, :], gt_xyxy[None, :, :]
    iw = np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1
    ih = np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1
    area_p = (pred_xyxy[:, 2] - pred_xyxy[:, 0] + 1) * (pred_xyxy[:, 3] - pred_xyxy[:, 1] + 1)
    area_g = (gt_xyxy[:, 2] - gt_xyxy[:, 0] + 1) * (gt_xyxy[:, 3] - gt_xyxy[:, 1] + 1)
    inter = iw * ih
    ua = area_p[:, None] + area_g[None, :] - inter
    ok = (iw > 0) & (ih > 0)
    return np.divide(inter, ua, out=np.zeros_like(inter, dtype=np.float64), where=ok)


@dataclass
class SettingResult:
    ap: float
    precision: np.ndarray
    recall: np.ndarray
    num_faces: int
    recall_by_size: dict[str, tuple[int, int]]  # bucket -> (recalled, faces), at the lowest threshold


def evaluate_predictions(
    preds: dict[tuple[str, str], np.ndarray], gt: WiderGroundTruth, iou_threshold: float = 0.5,
    thresh_num: int = THRESHOLDS,
) -> dict[str, SettingResult]:
    """AP per setting. ``preds`` holds raw scores (normalised here over all of them)."""
    norm = normalise_scores(preds)
    missing = [f"{e}/{n}" for e, n in zip(gt.events, gt.names, strict=True) if (e, n) not in norm]
    if missing:
        log.warning("%d ground-truth images have no prediction file; their faces count as misses: %s%s",
                    len(missing), ", ".join(missing[:10]), " ..." if len(missing) > 10 else "")

    # Per image, once for all settings: each detection's score, best face (global index) and hit flag.
    offsets = np.cumsum([0] + [len(b) for b in gt.boxes])
    scores, best, hit = [], [], []
    for i, (e, n) in enumerate(zip(gt.events, gt.names, strict=True)):
        d = norm.get((e, n))
        g = gt.boxes[i]
        if d is None or len(d) == 0 or len(g) == 0:
            continue
        d = d[np.argsort(-d[:, 4], kind="stable")]
        pb = np.concatenate([d[:, :2], d[:, :2] + d[:, 2:4]], 1)
        gb = np.concatenate([g[:, :2], g[:, :2] + g[:, 2:4]], 1)
        ov = iou_plus_one(pb, gb)
        scores.append(d[:, 4])
        best.append(ov.argmax(1) + offsets[i])
        hit.append(ov.max(1) >= iou_threshold)
    score = np.concatenate(scores) if scores else np.zeros(0)
    best_g = np.concatenate(best) if best else np.zeros(0, np.int64)
    hits = np.concatenate(hit) if hit else np.zeros(0, bool)

    thresholds = 1 - (np.arange(thresh_num) + 1) / thresh_num
    heights = np.concatenate([b[:, 3] for b in gt.boxes]) if offsets[-1] else np.zeros(0)
    results = {}
    for setting, lists in gt.settings.items():
        counted = np.zeros(offsets[-1], bool)
        for i, keep in enumerate(lists):
            counted[offsets[i] + keep] = True
        count_face = int(counted.sum())
        good = hits & counted[best_g]
        proposal = ~(hits & ~counted[best_g])
        # A face is recalled from the highest score among the detections that hit it.
        first = np.full(offsets[-1], -np.inf)
        np.maximum.at(first, best_g[good], score[good])
        recalled_scores = np.sort(first[np.isfinite(first)])
        prop_scores = np.sort(score[proposal])
        n_prop = len(prop_scores) - np.searchsorted(prop_scores, thresholds, side="left")
        n_rec = len(recalled_scores) - np.searchsorted(recalled_scores, thresholds, side="left")
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(n_prop > 0, n_rec / np.maximum(n_prop, 1), 0.0)
        recall = n_rec / max(count_face, 1)
        by_size = {}
        for lo, hi in zip(SIZE_BUCKETS[:-1], SIZE_BUCKETS[1:], strict=True):
            in_b = counted & (heights >= lo) & (heights < hi)
            label = f"{lo}-{hi}px" if np.isfinite(hi) else f">={lo}px"
            by_size[label] = (int((in_b & np.isfinite(first)).sum()), int(in_b.sum()))
        ap = average_precision(recall, precision, "all")
        results[setting] = SettingResult(ap, precision, recall, count_face, by_size)
    return results


def detections_to_wider(dets: list, paths: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """``[(boxes xyxy, scores, labels)]`` + image paths ``.../<event>/<name>.jpg`` -> ``{(event, name): [k, 5]}``."""
    return {(Path(p).parent.name, Path(p).stem): np.concatenate(
        [b[:, :2], b[:, 2:] - b[:, :2], np.asarray(s)[:, None]], 1) for (b, s, _), p in zip(dets, paths, strict=True)}


def write_submission(folder: str | Path, event: str, name: str, boxes_xyxy: np.ndarray, scores: np.ndarray) -> Path:
    """One image's detections in the official submission layout (``<event>/<name>.txt``), atomically."""
    from gridface.utils.io import write_text

    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    lines = [name, str(len(b))] + [
        f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f} {s:.5f}" for (x1, y1, x2, y2), s in zip(b, scores, strict=True)]
    return write_text(Path(folder) / event / f"{name}.txt", "\n".join(lines) + "\n")
