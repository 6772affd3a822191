"""The one record every parser returns: an image path and its boxes in original pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class LabelError(ValueError):
    """A label file that cannot be read; the message names the file and line."""


@dataclass
class Sample:
    """Boxes ``[N, 4]`` xyxy pixels; ``ignore`` marks boxes that neither count nor penalise (invalid,
    DontCare, crowd, below the minimum size)."""

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray = field(default=None)  # type: ignore[assignment]
    origin: str = ""  # where the sample is listed (label file:line), for reports
    declared_size: tuple[int, int] | None = None  # (width, height) the label file gives (COCO), checked when decoded

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if self.ignore is None:
            self.ignore = np.zeros(len(self.boxes), bool)
        self.ignore = np.asarray(self.ignore, bool).reshape(-1)
        if not len(self.boxes) == len(self.labels) == len(self.ignore):
            raise ValueError(f"{self.image}: boxes, labels and ignore differ in length")
