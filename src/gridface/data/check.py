"""Decode every image of a split once, in parallel, and report the ones that cannot be used.

Used by ``python -m gridface.check_data`` (before a long job) and by ``dataset.strict=true`` (at start-up).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gridface.data import problems as P
from gridface.data.images import ImageReadError, read_image_rgb
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample


@dataclass
class ImageCheck:
    sample: Sample
    size: tuple[int, int] | None   # (width, height); None when unusable
    error: ImageReadError | None


def image_size(sample: Sample) -> ImageCheck:
    try:
        img = read_image_rgb(sample.image)
    except ImageReadError as e:
        return ImageCheck(sample, None, e)
    return ImageCheck(sample, (img.shape[1], img.shape[0]), None)


def scan_images(samples: Sequence[Sample], problems: DataProblems, workers: int | None = None,
                desc: str | None = "decoding images") -> list[ImageCheck]:
    """Decode each sample's image (OpenCV releases the GIL, so threads run in parallel); every unusable one, and
    every usable one with boxes wholly outside it, is added to ``problems`` with the label file line that lists it
    (raising there when ``strict``)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(image_size, samples), total=len(samples), desc=desc, unit="img",
                            disable=desc is None))
    for r in results:
        where = r.sample.origin or str(r.sample.image)
        if r.error is not None:
            problems.add(f"image {r.error.kind}", where, f"{r.error}; image skipped")
            continue
        declared = r.sample.declared_size
        if declared and tuple(declared) != tuple(r.size):
            turned = " (the two sides swapped: labels made on the pixels before the EXIF rotation?)" \
                if tuple(declared) == tuple(r.size)[::-1] else " (resized or replaced after labelling?)"
            problems.add(P.SIZE_MISMATCH, where, f"the labels give {r.sample.image.name} as {declared[0]}x"
                                                 f"{declared[1]}, it decodes to {r.size[0]}x{r.size[1]}{turned}; its "
                                                 "boxes may not lie where the faces are")
        outside = outside_record(r.sample.boxes, r.size, r.sample.image, r.sample.origin)
        if outside:
            problems.add(P.OUTSIDE_IMAGE, where, outside["message"])
    return results


def boxes_outside(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which xyxy boxes have no area inside an image of ``size`` (width, height)."""
    w, h = size
    return (boxes[:, 0] >= w) | (boxes[:, 1] >= h) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)


def outside_record(boxes: np.ndarray, size: tuple[int, int], image: str | Path, origin: str = ""
                   ) -> dict[str, str] | None:
    """The problem record of an image whose label lists boxes (xyxy, original pixels) wholly outside its ``size``
    (width, height)
    (labels made for the image before it was resized or cropped, or for another image), or None. check_data adds
    it to its report; training's loaders pass it with the batch, and the run reports each image once."""
    outside = boxes_outside(boxes, size)
    if not outside.any():
        return None
    x1, y1, x2, y2 = (f"{v:g}" for v in boxes[outside][0])
    return {"path": str(image), "origin": origin or str(image),
            "message": f"{int(outside.sum())} box(es) lie wholly outside the {size[0]}x{size[1]} image "
                       f"{Path(image).name} (the first: x1={x1} y1={y1} x2={x2} y2={y2}); training drops them, "
                       "validation counts them as missed faces"}


def split_faults(samples: Sequence[Sample], split: str) -> list[tuple[str, str]]:
    """What makes a whole split useless, as (problem kind, message): not one face box of the classes read (a
    detector trained on background, an AP that measures nothing), or every box within 0-1 (labels normalised to
    the image size: each face then lies in the image's top-left pixel). Training, evaluation and check_data ask
    the same question here, so ``check_data && train`` cannot pass what training refuses."""
    faults = []
    if not any(len(s.boxes) > int(s.ignore.sum()) for s in samples):
        faults.append((P.NO_FACES, f"the {split} split lists {len(samples)} images but not one face box of the "
                                   "classes read; check dataset.class_names and dataset.class_map against the "
                                   "labels' class names (a warning above lists the classes the label reader "
                                   "skipped, if any)"))
    boxes = [s.boxes for s in samples if len(s.boxes)]
    if boxes and float(np.concatenate(boxes)[:, 2:].max()) <= 1.0:
        faults.append((P.NORMALISED, f"every box of the {split} split lies within 0..1 (x2 and y2 <= 1): the "
                                     "labels look normalised to the image size, and each face would be the image's "
                                     "top-left pixel; KITTI and COCO boxes are in pixels (multiply x by the image "
                                     "width and y by its height)"))
    return faults
