"""Data problems are reported, never silent: each is logged with its file and line when found, counted by kind,
and summarised at the end of a run; ``dataset.strict=true`` makes the first one an error instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gridface.data.sample import LabelError

log = logging.getLogger("gridface.data")

# kinds of label problems (image problems use the kinds of gridface.data.images)
SHORT_LINE = "wrong number of fields"
NOT_NUMBER = "value not a number"
NON_FINITE = "non-finite value"
DEGENERATE = "box with zero or negative size"
DUPLICATE = "image listed twice"
SAME_STEM = "two images for one label file"
COUNT_MISMATCH = "face count disagrees with the lines"
BAD_FLAG = "flag out of range"
UNKNOWN_REFERENCE = "unknown image or category id"
NOT_TEXT = "label file not UTF-8 text"
OUTSIDE_IMAGE = "box outside the image"
SIZE_MISMATCH = "image size differs from the labels'"
NO_LABEL_FILE = "image without a label file"
ORPHAN_LABEL = "label file without an image"
MISSING_IMAGE = "image missing"
NO_FACES = "split without a face to train or measure"
NORMALISED = "boxes in 0-1, not pixels"


@dataclass
class Problem:
    kind: str
    where: str      # file:line (1-based), or file and what within it
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class DataProblems:
    """Collects problems of one data load. ``strict``: raise :class:`LabelError` on the first one.
    ``log_first``: how many of each kind are logged in full (the rest are counted, then summarised)."""

    strict: bool = False
    log_first: int = 10
    quiet: bool = False
    items: list[Problem] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter, repr=False)

    def __post_init__(self) -> None:
        self.by_kind.update(p.kind for p in self.items)

    def add(self, kind: str, where: str, message: str) -> None:
        problem = Problem(kind, where, message)
        if self.strict:  # nothing is skipped then: the message without what a lenient run would do about it
            found, _, then = problem.message.rpartition("; ")
            raise LabelError(f"{problem.where}: {found if found and 'skipped' in then else problem.message} "
                             "(dataset.strict=true makes every data problem an error)")
        self.items.append(problem)
        self.by_kind[kind] += 1
        n = self.by_kind[kind]
        if not self.quiet and n <= self.log_first:
            log.warning("%s%s", problem, " (further ones of this kind are counted, not logged)"
                        if n == self.log_first else "")

    def counts(self) -> dict[str, int]:
        return dict(self.by_kind)

    def summary(self, examples: int = 20) -> dict[str, Any]:
        """For ``result.json`` and reports: counts by kind and the first ``examples`` of each, as file:line."""
        by_kind: dict[str, list[str]] = {}
        for p in self.items:
            by_kind.setdefault(p.kind, []).append(str(p))
        return {"total": len(self.items), "counts": self.counts(),
                "examples": {k: v[:examples] for k, v in by_kind.items()}}

    def __len__(self) -> int:
        return len(self.items)


def run_summary(problems: DataProblems, skipped_images: dict[str, dict[str, str]],
                decoded: DataProblems | None = None) -> dict[str, Any]:
    """What a run's ``result.json`` says about its data: the label problems found at load time plus the images
    skipped while training or validating (each counted once, by kind: ``image truncated``, ...) and those found
    once an image was decoded (``decoded``: labels with boxes wholly outside their image, as check_data counts)."""
    merged = DataProblems(quiet=True, items=list(problems.items) + list(decoded.items if decoded else []))
    for path, skip in skipped_images.items():
        merged.add(f"image {skip['kind']}", skip.get("origin") or path, f"{path}: {skip['kind']}; image skipped")
    return merged.summary()


def summary_line(counts: dict[str, int]) -> str:
    if not counts:
        return "no data problems"
    return "data problems: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
