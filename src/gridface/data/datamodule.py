"""LightningDataModule: sources (from config) -> DetectionDataset -> DataLoader.

``decode="gpu"`` (``dataset.decode=gpu``) swaps in the GPU data path: workers read bytes and labels only
(:class:`gridface.data.device_decode.EncodedDataset`), and decode, letterbox, augmentation and target encoding run
batched wherever the batch lands (:meth:`GridBoxDataModule.on_after_batch_transfer`, see
:mod:`gridface.data.device_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from gridface.data.check import scan_images
from gridface.data.dataset import DetectionDataset, collate
from gridface.data.device_augment import DeviceAugment
from gridface.data.device_batch import DeviceBatchBuilder
from gridface.data.device_decode import EncodedDataset, collate_encoded
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample
from gridface.data.transforms import build_augment
from gridface.targets import GridBoxTargetEncoder

DECODE_CHOICES = ("cpu", "gpu")


class GridBoxDataModule(pl.LightningDataModule):
    """``train_source``/``val_source`` are callables returning ``list[Sample]`` (``problems=`` collects what is
    wrong with the labels); they are called in ``prepare_data`` (rank zero: generation, downloads of nothing)
    and again in ``setup``. ``strict``: every data problem is an error at start-up, and every image is decoded
    once before training to find them. ``decode``: ``cpu`` (workers do everything) or ``gpu`` (workers read bytes;
    the rest runs batched on the device the batch is moved to)."""

    def __init__(
        self,
        train_source: Callable[[], list[Sample]],
        val_source: Callable[[], list[Sample]],
        encoder: GridBoxTargetEncoder,
        input_hw: Sequence[int],
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        augment: Sequence | None = None,
        min_box_size: float = 2.0,
        strict: bool = False,
        decode: str = "cpu",
    ) -> None:
        super().__init__()
        if decode not in DECODE_CHOICES:
            raise ValueError(f"dataset.decode = {decode!r}: must be one of {', '.join(DECODE_CHOICES)}")
        self.decode = decode
        self.train_source, self.val_source = train_source, val_source
        self.encoder = encoder
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        # The GPU path reads the same augment group; what it cannot reproduce is an error naming the key, here.
        self.augment = build_augment(augment) if decode == "cpu" else None
        self.device_batches = DeviceBatchBuilder(self.input_hw, encoder, DeviceAugment.from_transforms(augment),
                                                 min_box_size) if decode == "gpu" else None
        self.min_box_size = min_box_size
        self.strict = strict
        self.problems = DataProblems(strict=strict)
        self.train_set: DetectionDataset | EncodedDataset | None = None
        self.val_set: DetectionDataset | EncodedDataset | None = None

    def prepare_data(self) -> None:
        self.train_source(problems=DataProblems(quiet=True))
        self.val_source(problems=DataProblems(quiet=True))

    def load(self, source: Callable[..., list[Sample]], split: str) -> list[Sample]:
        samples = source(problems=self.problems)
        if self.strict:
            scan_images(samples, self.problems, desc=f"dataset.strict: checking the {split} images")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.decode == "gpu":
            if stage in (None, "fit") and self.train_set is None:
                self.train_set = EncodedDataset(self.load(self.train_source, "train"), "train", train=True)
            if stage in (None, "fit", "validate") and self.val_set is None:
                self.val_set = EncodedDataset(self.load(self.val_source, "val"), "val")
            return
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = DetectionDataset(self.load(self.train_source, "train"), self.input_hw, self.encoder,
                                              self.augment, "train", min_box_size=self.min_box_size)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = DetectionDataset(self.load(self.val_source, "val"), self.input_hw, self.encoder, None,
                                            "val", min_box_size=self.min_box_size)

    def _loader(self, ds: DetectionDataset | EncodedDataset, batch_size: int, shuffle: bool) -> DataLoader:
        collate_fn = collate
        if isinstance(ds, EncodedDataset):
            collate_fn = partial(collate_encoded, num_classes=self.encoder.num_classes, train=ds.train)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_fn, persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, False)

    def batches_on(self, loader: Iterable[Any], device: torch.device | str) -> Iterator[Any]:
        """A loader's batches as the steps see them, for code that iterates a loader outside the Trainer's loops
        (the prune callback's Taylor criterion): moved to ``device``, and built there on the GPU path."""
        for batch in loader:
            yield self.on_after_batch_transfer(move_data_to_device(batch, torch.device(device)), 0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """GPU path: the batch is on the device now; decode, letterbox, augment (training batches) and encode it
        there. The CPU path's batches pass unchanged."""
        if self.device_batches is not None and DeviceBatchBuilder.is_encoded(batch):
            return self.device_batches(batch)
        return batch
