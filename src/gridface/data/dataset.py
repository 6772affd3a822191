"""DetectionDataset: read an image, letterbox, augment, encode GridBox targets.

An image that cannot be used (missing, truncated, corrupt: see :mod:`gridface.data.images`) is logged with its
path and the label file line that lists it, and skipped: ``__getitem__`` returns a skip record that
:func:`collate` drops and counts by kind, so one bad file never ends a long run and is never trained on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from gridface.data.check import outside_record
from gridface.data.images import ImageReadError, read_image_rgb
from gridface.data.sample import Sample
from gridface.data.transforms import letterbox, to_tensor_layout
from gridface.targets import GridBoxTargetEncoder

log = logging.getLogger(__name__)


def iter_network_inputs(paths: Sequence[str | Path], input_hw: tuple[int, int], desc: str | None = None
                        ) -> Iterator[np.ndarray]:
    """CHW float inputs, letterboxed exactly as in training; unusable files are reported and skipped."""
    skipped = 0
    for p in tqdm(paths, desc=desc, unit="img") if desc else paths:
        try:
            img = read_image_rgb(p)
        except ImageReadError as e:
            skipped += 1
            log.warning("skipping image %s", e)
            continue
        yield to_tensor_layout(letterbox(img, input_hw)[0])
    if skipped:
        log.warning("%d of %d images skipped (see the warnings above)", skipped, len(paths))


class DetectionDataset(Dataset):
    def __init__(
        self,
        samples: list[Sample],
        input_hw: tuple[int, int],
        encoder: GridBoxTargetEncoder | None,
        augment: A.Compose | None = None,
        name: str = "dataset",
        min_box_size: float = 0.0,
    ) -> None:
        """``min_box_size``: boxes narrower or lower than this (px, in the network input, after letterbox and
        augmentation) become ignore boxes: too small to learn from, but not background either."""
        if not samples:
            raise ValueError(f"{name}: no samples; check the dataset paths")
        self.samples = samples
        self.input_hw = tuple(input_hw)
        self.encoder = encoder
        self.augment = augment
        self.name = name
        self.min_box_size = float(min_box_size)
        self._reported: set[int] = set()
        # The augmentation of a sample is a function of (seed, epoch, index) alone: the same in any worker, rank or
        # process, before and after a resume. The datamodule sets the seed; its sampler passes (epoch, index).
        # (albumentations' own default, seed=None, is OS entropy: no two runs would draw alike.)
        self.seed = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: an index, or ``(epoch, index)`` from :class:`gridface.data.datamodule.EpochSampler` (a bare
        index augments as in epoch 0)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = self.samples[index]
        try:
            image = read_image_rgb(s.image)
        except ImageReadError as e:
            if index not in self._reported:  # once per worker process, not every epoch
                self._reported.add(index)
                log.warning("%s: skipping image %s%s", self.name, e, f" (listed at {s.origin})" if s.origin else "")
            return {"skip": {"kind": e.kind, "path": str(s.image), "origin": s.origin}}
        h, w = image.shape[:2]
        outside = outside_record(s.boxes, (w, h), s.image, s.origin)
        boxes = s.boxes.copy()
        clipped = np.clip(boxes, 0, [w, h, w, h])
        n_clipped = int((np.abs(clipped - boxes) > 0.5).any(1).sum())
        if n_clipped:
            log.debug("%s: %s: %d boxes outside the %dx%d image were clipped", self.name, s.image, n_clipped, w, h)
        valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        boxes, labels, ignore = clipped[valid], s.labels[valid], s.ignore[valid]

        net_img, lb = letterbox(image, self.input_hw)
        net_boxes = lb.to_input(boxes)
        if self.augment is not None:
            entropy = np.random.SeedSequence([self.seed, epoch, index])
            self.augment.set_random_state(np.random.default_rng(entropy),
                                          random.Random(int(entropy.generate_state(1, np.uint64)[0])))
            out = self.augment(image=net_img, bboxes=net_boxes, labels=labels, ignore=ignore)
            net_img = out["image"]
            net_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64)
            ignore = np.asarray(out["ignore"], bool)
        if self.min_box_size > 0 and len(net_boxes):
            size = np.minimum(net_boxes[:, 2] - net_boxes[:, 0], net_boxes[:, 3] - net_boxes[:, 1])
            ignore = ignore | (size < self.min_box_size)
        # Evaluation and export pass no encoder: they need images and ground truth, not training targets.
        targets = {} if self.encoder is None else self.encoder(net_boxes, labels, self.input_hw, ignore=ignore)
        return {
            "image": torch.from_numpy(to_tensor_layout(net_img)),
            **{k: torch.from_numpy(v) for k, v in targets.items()},
            # Evaluation works in original image coordinates:
            "gt_boxes": s.boxes if self.augment is None else net_boxes,
            "gt_labels": s.labels if self.augment is None else labels,
            "gt_ignore": s.ignore if self.augment is None else ignore,
            "letterbox": lb,
            "path": str(s.image),
            "clipped": n_clipped,
            "outside": outside,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep per-image metadata as lists, drop skipped images (``skips`` says which and why)."""
    kept = [it for it in items if "skip" not in it]
    skips = [it["skip"] for it in items if "skip" in it]
    batch: dict[str, Any] = {"skipped": len(skips), "skips": skips}
    if not kept:
        return batch
    for key in ("image", "cov", "cov_norm", "bbox", "ignore"):
        if key in kept[0]:
            batch[key] = torch.stack([it[key] for it in kept])
    for key in ("gt_boxes", "gt_labels", "gt_ignore", "letterbox", "path"):
        batch[key] = [it[key] for it in kept]
    batch["clipped"] = sum(it["clipped"] for it in kept)
    batch["outside"] = [it["outside"] for it in kept if it.get("outside")]
    return batch
