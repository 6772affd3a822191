"""Label parsers: WIDER FACE text ground truth, KITTI (TAO's format) and COCO json.

Every parser returns ``list[Sample]``. What makes the rest of a file unreadable (a count that is not a number, a
file that ends inside an entry, invalid JSON) is a :class:`LabelError` naming the file and the 1-based line.
A bad box line, an image listed twice, a missing image or an orphan file is a reported problem (see
:mod:`gridface.data.problems`): logged with file and line, counted, and the line skipped; nothing malformed is
ever read as a face. Files may carry a UTF-8 byte-order mark and CRLF line ends.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gridface.data import problems as P
from gridface.data.images import IMAGE_SUFFIXES
from gridface.data.problems import DataProblems
from gridface.data.sample import LabelError, Sample

log = logging.getLogger(__name__)
__all__ = ["IMAGE_SUFFIXES", "read_coco", "read_kitti", "read_widerface_txt"]

WIDER_FIELDS = "x y w h blur expression illumination invalid occlusion pose"
KITTI_FIELDS = 15  # type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]


class NotUTF8(LabelError):
    """A label file that is not UTF-8 text; ``where`` (file:line) and ``reason`` for a reader that skips it."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


def read_text(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, a byte-order mark and CR line ends removed."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise NotUTF8(f"{path}:{line}", f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return text.splitlines()


def parse_numbers(fields: list[str], where: str, what: str, problems: DataProblems) -> list[float] | None:
    """Floats, or None after reporting a value that is not a number or not finite."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        problems.add(P.NOT_NUMBER, where, f"{what} must be numbers, got '{' '.join(fields)}'; line skipped")
        return None
    if not all(math.isfinite(v) for v in values):
        problems.add(P.NON_FINITE, where, f"{what} hold nan or inf: '{' '.join(fields)}'; line skipped")
        return None
    return values


def warn_unmapped(source: Path, unmapped: dict[str, tuple[int, str]], what: str) -> None:
    """One warning for the objects a reader skipped because their class is not one of the classes trained: each
    name with its count and where it first appears (a typo in a label or in the class map shows up here)."""
    if not unmapped:
        return
    listed = ", ".join(f"'{name}' x{count} (first at {where})" for name, (count, where) in sorted(unmapped.items()))
    log.warning("%s: skipped %d objects whose class is not %s: %s", source, sum(c for c, _ in unmapped.values()),
                what, listed)


def note_unmapped(unmapped: dict[str, tuple[int, str]], name: str, where: str) -> None:
    """Count an object of class ``name`` skipped at ``where`` (the first place is kept)."""
    count, first = unmapped.get(name, (0, where))
    unmapped[name] = (count + 1, first)


def is_zero(field: str) -> bool:
    try:
        return float(field) == 0
    except ValueError:
        return False


def is_image_path(line: str) -> bool:
    return line.strip().lower().endswith(IMAGE_SUFFIXES)


def drop_missing_images(samples: list[Sample], problems: DataProblems) -> list[Sample]:
    kept = []
    for s in samples:
        if s.image.is_file():
            kept.append(s)
        else:
            problems.add(P.MISSING_IMAGE, s.origin or str(s.image), f"image {s.image} not found; entry skipped")
    return kept


def read_widerface_txt(
    gt_file: str | Path, image_root: str | Path, min_size: float = 0.0, keep_invalid: bool = False,
    problems: DataProblems | None = None, check_images: bool = True,
) -> list[Sample]:
    """Parse ``wider_face_{split}_bbx_gt.txt``: a path line, a count, then ``x y w h blur expression illumination
    invalid occlusion pose`` per face. An entry with zero faces may carry one all-zero placeholder line (the
    official files do) or none. Invalid faces and faces smaller than ``min_size`` are kept as ``ignore`` boxes.
    An image listed twice is merged into one sample, with a report naming both lines. ``check_images=False``:
    keep entries whose image is not here (evaluation needs only the ground truth)."""
    problems = problems if problems is not None else DataProblems()
    gt_file, image_root = Path(gt_file), Path(image_root)
    if not gt_file.is_file():
        raise FileNotFoundError(f"WIDER FACE ground truth not found: {gt_file}")
    lines = read_text(gt_file)
    by_name: dict[str, Sample] = {}
    previous: tuple[str, int] | None = None  # the last entry's image and face-count line
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        name_line = i + 1
        if not is_image_path(name):
            hint = (f" (does the face count of {previous[0]} on line {previous[1]} say fewer faces than it has?)"
                    if previous is not None and len(name.split()) == 10 else "")
            raise LabelError(f"{gt_file}:{name_line}: expected an image path ({', '.join(IMAGE_SUFFIXES)}), "
                             f"got '{name[:80]}'{hint}")
        if i + 1 >= len(lines):
            raise LabelError(f"{gt_file}:{name_line}: unexpected end of file: {name} has no face count line")
        try:
            count = int(lines[i + 1].strip())
            if count < 0:
                raise ValueError
        except ValueError:
            raise LabelError(f"{gt_file}:{i + 2}: expected the face count of {name} (a whole number >= 0), "
                             f"got '{lines[i + 1].strip()[:80]}'") from None
        previous = (name, i + 2)
        i += 2
        rows = []
        for k in range(count):
            if i >= len(lines):
                raise LabelError(f"{gt_file}:{name_line + 1}: unexpected end of file: {name} promises {count} faces, "
                                 f"the file ends after {k}")
            if is_image_path(lines[i]):
                raise LabelError(f"{gt_file}:{name_line + 1}: {name} promises {count} faces but line {i + 1} "
                                 f"already names the next image ({lines[i].strip()[:80]})")
            where, fields = f"{gt_file}:{i + 1}", lines[i].split()
            i += 1
            if len(fields) != 10:
                problems.add(P.SHORT_LINE, where, f"a face line of {name} needs 10 values ({WIDER_FIELDS}), "
                                                  f"got {len(fields)}; line skipped")
                continue
            vals = parse_numbers(fields, where, f"the face values of {name}", problems)
            if vals is None:
                continue
            if vals[2] <= 0 or vals[3] <= 0:
                problems.add(P.DEGENERATE, where, f"a face of {name} has width {vals[2]:g} and height {vals[3]:g}; "
                                                  "line skipped")
                continue
            if vals[7] not in (0, 1):
                problems.add(P.BAD_FLAG, where, f"a face of {name} has invalid={vals[7]:g}; the flag is 0 (valid) or "
                                                "1 (invalid, an ignore region); line skipped")
                continue
            rows.append(vals)
        if count == 0 and i < len(lines) and lines[i].strip() and not is_image_path(lines[i]):
            # the official placeholder line ("0 0 0 0 0 0 0 0 0 0") of an image without faces; anything else there
            # is a face the count left out (reported: the count is what to fix)
            if not all(is_zero(f) for f in lines[i].split()):
                problems.add(P.COUNT_MISMATCH, f"{gt_file}:{i + 1}",
                             f"{name} has a face count of 0 (line {name_line + 1}) but this line is not the all-zero "
                             f"placeholder: '{lines[i].strip()[:80]}'; line skipped")
            i += 1
        arr = np.array(rows, np.float64).reshape(-1, 10)
        boxes = np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:4]], 1)
        ignore = (np.minimum(arr[:, 2], arr[:, 3]) < min_size) | ((arr[:, 7] > 0) & ~keep_invalid)
        origin = f"{gt_file}:{name_line}"
        if name in by_name:
            first = by_name[name]
            first_line = first.origin.rsplit(":", 1)[1]
            problems.add(P.DUPLICATE, origin, f"{name} is listed again (first at line {first_line}); its "
                                              f"{len(boxes)} faces are merged into that entry")
            by_name[name] = Sample(first.image, np.concatenate([first.boxes, boxes]),
                                   np.zeros(len(first.boxes) + len(boxes)), np.concatenate([first.ignore, ignore]),
                                   first.origin)
        else:
            by_name[name] = Sample(image_root / name, boxes, np.zeros(len(boxes)), ignore, origin)
    if not by_name:
        raise LabelError(f"{gt_file}: no images listed")
    samples = list(by_name.values())
    if not check_images:
        return samples
    samples = drop_missing_images(samples, problems)
    if not samples:
        raise LabelError(f"{gt_file}: none of its {len(by_name)} images exist under {image_root}")
    return samples


def read_kitti(
    image_dir: str | Path,
    label_dir: str | Path,
    class_map: Mapping[str, str] | None = None,
    class_names: list[str] | tuple[str, ...] = ("face",),
    problems: DataProblems | None = None,
) -> list[Sample]:
    """TAO's KITTI layout: one ``<stem>.txt`` per image, 15 fields per line (16 with a score):
    ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y``.

    ``class_map`` maps label names (lower-cased) to target class names; ``DontCare`` and anything mapped to
    ``dontcare`` become ignore boxes; unmapped names are skipped (as TAO does), listed in one warning with their
    counts. An image without a label file is an image with no faces (reported); a label file without an image is
    reported and skipped; two images with one stem (``a.jpg``, ``a.png``) are reported and the first kept.
    """
    problems = problems if problems is not None else DataProblems()
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"KITTI folder not found: {d}")
    class_map = {k.lower(): v.lower() for k, v in (class_map or {n: n for n in class_names}).items()}
    index = {n.lower(): i for i, n in enumerate(class_names)}
    images: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.stem in images:
            problems.add(P.SAME_STEM, str(p), f"{images[p.stem].name} has the same name before its suffix, and "
                                              f"{label_dir / (p.stem + '.txt')} can label only one of them; "
                                              f"{p.name} skipped")
            continue
        images[p.stem] = p
    labels_found = {p.stem: p for p in sorted(label_dir.glob("*.txt"))}
    samples: list[Sample] = []
    unmapped: dict[str, tuple[int, str]] = {}
    for stem, label_file in labels_found.items():
        if stem not in images:
            problems.add(P.ORPHAN_LABEL, str(label_file),
                         f"label file has no image '{stem}.*' ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}; skipped")
            continue
        try:
            text = read_text(label_file)
        except NotUTF8 as e:  # one unreadable label file: its image cannot be used, the others can
            problems.add(P.NOT_TEXT, e.where, f"{e.reason}; its image {images[stem].name} skipped")
            continue
        boxes, labels, ignore = [], [], []
        for n, line in enumerate(text, 1):
            parts, where = line.split(), f"{label_file}:{n}"
            if not parts:
                continue
            if len(parts) not in (KITTI_FIELDS, KITTI_FIELDS + 1):
                problems.add(P.SHORT_LINE, where, f"a KITTI line needs {KITTI_FIELDS} fields (type truncated occluded "
                                                  f"alpha x1 y1 x2 y2 and 7 3D values; 16 with a score), got "
                                                  f"{len(parts)}; line skipped")
                continue
            # a class name with a space ('Human face ...') shifts every field by one: 16 fields read as a scored
            # line whose box starts one field early; the non-numeric 'truncated' field tells it
            if parse_numbers(parts[1:4], where, "fields 2-4 (truncated occluded alpha; the type before them is one "
                                                "word, no spaces)", problems) is None:
                continue
            box = parse_numbers(parts[4:8], where, "box fields 5-8 (x1 y1 x2 y2)", problems)
            if box is None:
                continue
            x1, y1, x2, y2 = box
            if x2 <= x1 or y2 <= y1:
                problems.add(P.DEGENERATE, where, f"box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} has zero or "
                                                  "negative size; line skipped")
                continue
            name = class_map.get(parts[0].lower())
            dontcare = parts[0].lower() == "dontcare" or name == "dontcare"
            if not dontcare and name not in index:
                note_unmapped(unmapped, parts[0], where)
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(0 if dontcare else index[name])
            ignore.append(dontcare)
        samples.append(Sample(images[stem], boxes, labels, ignore, str(label_file)))
    for stem, image in images.items():
        if stem not in labels_found:
            problems.add(P.NO_LABEL_FILE, str(image), f"no label file {label_dir / (stem + '.txt')}; "
                                                      "used as an image with no faces")
            samples.append(Sample(image, np.zeros((0, 4)), np.zeros(0), None, str(image)))
    if not samples:
        raise LabelError(f"{label_dir}: no KITTI label files (*.txt) with images in {image_dir}")
    warn_unmapped(label_dir, unmapped, f"one of {list(class_names)} after dataset.class_map")
    return samples


def coco_id(value: Any) -> int | str | None:
    """A COCO id as the reader keys it: an int, a string, or a whole-number float as an int (pandas writes ``2.0``,
    which pycocotools accepts); None for anything else (a bool, a fraction, a list, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def read_coco(
    annotation_file: str | Path, image_root: str | Path, class_names: list[str] | tuple[str, ...] = ("face",),
    problems: DataProblems | None = None,
) -> list[Sample]:
    """COCO json: ``bbox`` is x, y, w, h; ``iscrowd`` boxes become ignore boxes; categories are matched
    to ``class_names`` by name (others skipped, listed in one warning). Two image records with one ``file_name`` are
    merged (reported); two with one ``id`` are an error (annotations could label either). An annotation that is
    malformed or names an id that no image or category has is reported and skipped."""
    problems = problems if problems is not None else DataProblems()
    annotation_file, image_root = Path(annotation_file), Path(image_root)
    try:
        data = json.loads("\n".join(read_text(annotation_file)))
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}") from None
    except json.JSONDecodeError as e:
        raise LabelError(f"{annotation_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise LabelError(f"{annotation_file}: a COCO file is a JSON object with images, annotations and categories, "
                         f"got a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise LabelError(f"{annotation_file}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise LabelError(f"{annotation_file}: '{key}' must be a list, got {json.dumps(data[key])[:40]}")
    index = {n.lower(): i for i, n in enumerate(class_names)}
    cat: dict[Any, int | None] = {}  # category id -> class index, None for a category not trained
    cat_name: dict[Any, str] = {}
    for k, c in enumerate(data["categories"]):
        try:
            category_id = coco_id(c["id"])
            if category_id is None:
                raise TypeError
            cat_name[category_id] = str(c["name"])
        except (KeyError, TypeError):
            raise LabelError(f"{annotation_file}: categories[{k}] needs id (a whole number or a string) and name, "
                             f"got {str(c)[:80]}") from None
        cat[category_id] = index.get(cat_name[category_id].lower())
    file_of: dict[Any, str] = {}
    first_index: dict[str, int] = {}
    index_of_id: dict[Any, int] = {}
    declared: dict[str, tuple[int, int]] = {}  # file -> (width, height) of its images entry
    for k, img in enumerate(data["images"]):
        try:
            image_id, file_name = coco_id(img["id"]), str(img["file_name"])
        except (KeyError, TypeError):
            raise LabelError(f"{annotation_file}: images[{k}] needs id and file_name") from None
        if image_id is None:
            raise LabelError(f"{annotation_file}: images[{k}] has id {img['id']!r:.40}: a whole number or a string")
        if image_id in index_of_id:  # annotations name images by id: which of the two they label cannot be told
            raise LabelError(f"{annotation_file}: images[{k}] ({file_name}) has id {image_id!r}, the id of "
                             f"images[{index_of_id[image_id]}] ({file_of[image_id]}); each image needs its own id")
        index_of_id[image_id] = k
        if file_name in first_index:
            problems.add(P.DUPLICATE, f"{annotation_file}: images[{k}]",
                         f"{file_name} is listed again (first as images[{first_index[file_name]}]); "
                         "their annotations are merged")
        first_index.setdefault(file_name, k)
        file_of[image_id] = file_name
        size = (img.get("width"), img.get("height"))
        if all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in size):
            declared.setdefault(file_name, (int(size[0]), int(size[1])))
    per_file: dict[str, list] = {name: [] for name in first_index}
    unmapped: dict[str, tuple[int, str]] = {}
    for k, ann in enumerate(data["annotations"]):
        where = f"{annotation_file}: annotations[{k}] (id {ann.get('id', '?') if isinstance(ann, dict) else '?'})"
        try:
            bbox, image_id, category = ann["bbox"], ann["image_id"], ann["category_id"]
        except (KeyError, TypeError):
            problems.add(P.SHORT_LINE, where, "needs bbox [x, y, w, h], image_id and category_id; skipped")
            continue
        if coco_id(image_id) is None or coco_id(category) is None:
            problems.add(P.UNKNOWN_REFERENCE, where, f"image_id {image_id!r:.40} and category_id {category!r:.40} "
                                                     "must be whole numbers or strings; skipped")
            continue
        image_id, category = coco_id(image_id), coco_id(category)
        if image_id not in file_of:
            problems.add(P.UNKNOWN_REFERENCE, where, f"image_id {image_id!r} is not the id of any entry of images; "
                                                     "skipped")
            continue
        if category not in cat:
            problems.add(P.UNKNOWN_REFERENCE, where, f"category_id {category!r} is not the id of any entry of "
                                                     "categories; skipped")
            continue
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            got = f"{len(bbox)} values" if isinstance(bbox, list | tuple) else f"{type(bbox).__name__} {bbox!r:.40}"
            problems.add(P.SHORT_LINE, where, f"bbox needs 4 values [x, y, w, h], got {got}; skipped")
            continue
        vals = parse_numbers([str(v) for v in bbox], where, "bbox values", problems)
        if vals is None:
            continue
        x, y, w, h = vals
        if w <= 0 or h <= 0:
            problems.add(P.DEGENERATE, where, f"bbox has width {w:g} and height {h:g}; skipped")
            continue
        cls = cat[category]
        if cls is None:
            note_unmapped(unmapped, cat_name[category], where)
            continue
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # True/False compare equal to 1/0; '0' (a string) would read as a crowd
            problems.add(P.BAD_FLAG, where, f"iscrowd must be 0 or 1, got {crowd!r:.20}; skipped")
            continue
        per_file[file_of[image_id]].append((x, y, x + w, y + h, cls, bool(crowd)))
    warn_unmapped(annotation_file, unmapped, f"one of {list(class_names)}")
    samples = []
    for name, k in first_index.items():
        rows = np.array(per_file[name], np.float64).reshape(-1, 6)
        samples.append(Sample(image_root / name, rows[:, :4], rows[:, 4], rows[:, 5] > 0,
                              f"{annotation_file}: images[{k}]", declared.get(name)))
    if not samples:
        raise LabelError(f"{annotation_file}: no images")
    samples = drop_missing_images(samples, problems)
    if not samples:
        raise LabelError(f"{annotation_file}: none of its {len(first_index)} images exist under {image_root}")
    return samples
