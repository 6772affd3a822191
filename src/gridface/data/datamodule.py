"""LightningDataModule: sources (from config) -> DetectionDataset -> DataLoader."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from gridface.data.check import scan_images
from gridface.data.dataset import DetectionDataset, collate
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample
from gridface.data.transforms import build_augment
from gridface.targets import GridBoxTargetEncoder


class GridBoxDataModule(pl.LightningDataModule):
    """``train_source``/``val_source`` are callables returning ``list[Sample]`` (``problems=`` collects what is
    wrong with the labels); they are called in ``prepare_data`` (rank zero: generation, downloads of nothing)
    and again in ``setup``. ``strict``: every data problem is an error at start-up, and every image is decoded
    once before training to find them."""

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
    ) -> None:
        super().__init__()
        self.train_source, self.val_source = train_source, val_source
        self.encoder = encoder
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = build_augment(augment)
        self.min_box_size = min_box_size
        self.strict = strict
        self.problems = DataProblems(strict=strict)
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None

    def prepare_data(self) -> None:
        self.train_source(problems=DataProblems(quiet=True))
        self.val_source(problems=DataProblems(quiet=True))

    def load(self, source: Callable[..., list[Sample]], split: str) -> list[Sample]:
        samples = source(problems=self.problems)
        if self.strict:
            scan_images(samples, self.problems, desc=f"dataset.strict: checking the {split} images")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = DetectionDataset(self.load(self.train_source, "train"), self.input_hw, self.encoder,
                                              self.augment, "train", min_box_size=self.min_box_size)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = DetectionDataset(self.load(self.val_source, "val"), self.input_hw, self.encoder, None,
                                            "val", min_box_size=self.min_box_size)

    def _loader(self, ds: DetectionDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, False)
