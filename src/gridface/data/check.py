"""Decode every image of a split once, in parallel, and report the ones that cannot be used.

Used by ``python -m gridface.check_data`` (before a long job) and by ``dataset.strict=true`` (at start-up).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

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
    """Decode each sample's image (OpenCV releases the GIL, so threads run in parallel); every unusable one
    is added to ``problems`` with the label file line that lists it (raising there when ``strict``)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(image_size, samples), total=len(samples), desc=desc, unit="img",
                            disable=desc is None))
    for r in results:
        if r.error is not None:
            where = r.sample.origin or str(r.sample.image)
            problems.add(f"image {r.error.kind}", where, f"{r.error}; image skipped")
    return results
