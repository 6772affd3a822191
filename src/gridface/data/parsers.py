"""Label parsers: WIDER FACE text ground truth, KITTI (TAO's format) and COCO json.

Every parser returns ``list[Sample]``. A malformed line is a :class:`LabelError` naming the file and
line; a missing image is not checked here (the dataset reports and skips it when it is read).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gridface.data.sample import LabelError, Sample

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_widerface_txt(
    gt_file: str | Path, image_root: str | Path, min_size: float = 0.0, keep_invalid: bool = False
) -> list[Sample]:
    """Parse ``wider_face_{split}_bbx_gt.txt``: a path line, a count, then ``x y w h blur expression
    illumination invalid occlusion pose`` per face. Entries with zero faces carry one all-zero line.
    Invalid faces and faces smaller than ``min_size`` are kept as ``ignore`` boxes."""
    gt_file, image_root = Path(gt_file), Path(image_root)
    if not gt_file.is_file():
        raise FileNotFoundError(f"WIDER FACE ground truth not found: {gt_file}")
    lines = gt_file.read_text().splitlines()
    samples, i = [], 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if not name.lower().endswith(IMAGE_SUFFIXES):
            raise LabelError(f"{gt_file}:{i + 1}: expected an image path, got '{name}'")
        try:
            count = int(lines[i + 1])
        except (IndexError, ValueError):
            raise LabelError(f"{gt_file}:{i + 2}: expected the face count for {name}") from None
        rows = []
        for k in range(max(count, 1)):
            ln = i + 2 + k
            try:
                vals = [float(v) for v in lines[ln].split()[:10]]
            except (IndexError, ValueError):
                raise LabelError(f"{gt_file}:{ln + 1}: expected 'x y w h blur expression illumination "
                                 f"invalid occlusion pose' for {name}") from None
            if len(vals) < 4:
                raise LabelError(f"{gt_file}:{ln + 1}: a face line needs at least x y w h, got {len(vals)} values")
            rows.append(vals + [0.0] * (10 - len(vals)))
        i += 2 + max(count, 1)
        arr = np.array(rows[:count], np.float64).reshape(-1, 10)
        boxes = np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:4]], 1)
        invalid = arr[:, 7] > 0
        ignore = (np.minimum(arr[:, 2], arr[:, 3]) < min_size) | (invalid & ~keep_invalid)
        ignore |= (arr[:, 2] <= 0) | (arr[:, 3] <= 0)
        samples.append(Sample(image_root / name, boxes, np.zeros(len(boxes)), ignore))
    if not samples:
        raise LabelError(f"{gt_file}: no images listed")
    return samples


def read_kitti(
    image_dir: str | Path,
    label_dir: str | Path,
    class_map: Mapping[str, str] | None = None,
    class_names: list[str] | tuple[str, ...] = ("face",),
) -> list[Sample]:
    """TAO's KITTI layout: one ``<stem>.txt`` per image, ``type trunc occ alpha x1 y1 x2 y2 ...`` per line.

    ``class_map`` maps label names (lower-cased) to target class names; ``DontCare`` and anything
    mapped to ``dontcare`` become ignore boxes; unmapped names are skipped (counted in the log).
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"KITTI folder not found: {d}")
    class_map = {k.lower(): v.lower() for k, v in (class_map or {n: n for n in class_names}).items()}
    index = {n.lower(): i for i, n in enumerate(class_names)}
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    samples, unmapped = [], 0
    for label_file in sorted(label_dir.glob("*.txt")):
        boxes, labels, ignore = [], [], []
        for n, line in enumerate(label_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 8:
                raise LabelError(f"{label_file}:{n}: KITTI lines need at least 8 fields "
                                 f"(type truncated occluded alpha x1 y1 x2 y2), got {len(parts)}")
            try:
                x1, y1, x2, y2 = (float(v) for v in parts[4:8])
            except ValueError:
                raise LabelError(f"{label_file}:{n}: box fields 5-8 must be numbers: '{line}'") from None
            if x2 < x1 or y2 < y1:
                raise LabelError(f"{label_file}:{n}: box has x2 < x1 or y2 < y1: '{line}'")
            name = class_map.get(parts[0].lower())
            dontcare = parts[0].lower() == "dontcare" or name == "dontcare"
            if not dontcare and name not in index:
                unmapped += 1
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(0 if dontcare else index[name])
            ignore.append(dontcare)
        image = images.get(label_file.stem)
        if image is None:
            image = image_dir / f"{label_file.stem}.jpg"  # reported as missing when read
        samples.append(Sample(image, boxes, labels, ignore))
    if not samples:
        raise LabelError(f"{label_dir}: no KITTI label files (*.txt)")
    if unmapped:
        log.info("KITTI %s: skipped %d objects whose class is not in the class map", label_dir, unmapped)
    return samples


def read_coco(
    annotation_file: str | Path, image_root: str | Path, class_names: list[str] | tuple[str, ...] = ("face",)
) -> list[Sample]:
    """COCO json: ``bbox`` is x, y, w, h; ``iscrowd`` boxes become ignore boxes; categories are matched
    to ``class_names`` by name (others skipped)."""
    annotation_file, image_root = Path(annotation_file), Path(image_root)
    try:
        data = json.loads(annotation_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}") from None
    except json.JSONDecodeError as e:
        raise LabelError(f"{annotation_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise LabelError(f"{annotation_file}: missing top-level key '{key}'")
    index = {n.lower(): i for i, n in enumerate(class_names)}
    cat = {c["id"]: index.get(str(c["name"]).lower()) for c in data["categories"]}
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for k, ann in enumerate(data["annotations"]):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            image_id, cls = ann["image_id"], cat.get(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise LabelError(f"{annotation_file}: annotations[{k}] needs bbox [x,y,w,h], image_id and "
                             "category_id") from None
        if image_id not in per_image:
            raise LabelError(f"{annotation_file}: annotations[{k}] refers to unknown image_id {image_id}")
        if cls is not None:
            per_image[image_id].append((x, y, x + w, y + h, cls, bool(ann.get("iscrowd", 0))))
    samples = []
    for img in data["images"]:
        rows = np.array(per_image[img["id"]], np.float64).reshape(-1, 6)
        samples.append(Sample(image_root / img["file_name"], rows[:, :4], rows[:, 4], rows[:, 5] > 0))
    if not samples:
        raise LabelError(f"{annotation_file}: no images")
    return samples
