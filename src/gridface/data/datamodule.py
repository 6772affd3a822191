"""LightningDataModule: sources (from config) -> DetectionDataset -> DataLoader.

Training reads through torchdata's ``StatefulDataLoader``. Lightning saves its ``state_dict`` (the position in
the epoch) in every checkpoint, mid-epoch ones included, and restores it on resume; the epoch's order and every
sample's augmentation are functions of the seed, the epoch and the sample, never of the process, worker or rank
that reads it. So a job killed or preempted mid-epoch goes on with the next unseen batch, sees each sample of the
epoch once, and ends with the weights of the uninterrupted run.

``decode="gpu"`` (``dataset.decode=gpu``) swaps in the GPU data path: workers read bytes and labels only
(:class:`gridface.data.device_decode.EncodedDataset`), and decode, letterbox, augmentation and target encoding run
batched wherever the batch lands (:meth:`GridBoxDataModule.on_after_batch_transfer`, see
:mod:`gridface.data.device_batch`); ``decode="hybrid"`` has the workers decode and letterbox (uint8) and the device
do the rest. A batch's augmentation is drawn from (seed, epoch, its samples), so it resumes exactly too. On a CUDA
device both pin their batches and build batch n+1 on a side stream while step n runs, on the training loop's thread
or (``dataset.prefetch=thread``) in a build thread (:mod:`gridface.data.prefetch`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning.utilities.rank_zero import WarningCache
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from gridface.data.check import scan_images, split_faults
from gridface.data.config import DECODE_CHOICES, PREFETCH_CHOICES
from gridface.data.dataset import DetectionDataset, collate
from gridface.data.device_augment import DeviceAugment
from gridface.data.device_batch import DeviceBatchBuilder
from gridface.data.device_decode import EncodedDataset, collate_encoded
from gridface.data.prefetch import DevicePrefetchLoader, PendingBatch, join_training_stream
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample
from gridface.data.transforms import build_augment
from gridface.targets import GridBoxTargetEncoder


class EpochSampler(StatefulDistributedSampler):
    """torchdata's resumable ``DistributedSampler`` (one replica in a single process) that yields
    ``(epoch, index)``: the epoch's order is a function of (seed, epoch) and each sample's augmentation of (seed,
    epoch, index) (:class:`DetectionDataset`), so nothing but the position in the epoch needs restoring. Lightning
    calls ``set_epoch`` before each epoch (under DDP and without)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        for index in super().__iter__():
            yield epoch, index


class ResumableLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose state also names its epoch, and that starts the next epoch when the state it
    is given had finished one.

    Lightning saves the loader's state with every checkpoint, and a checkpoint written at an epoch's last batch
    (``step.ckpt``, ``preempted.ckpt``) holds a loader whose epoch is used up. On resume Lightning goes on to the
    next epoch without asking the loader for a new iterator, so restored as it is, that state would make the next
    epoch empty (compare torchdata issue #1437). The epoch is saved because with loader workers the first indices
    are drawn when Lightning creates the iterator, before it calls ``set_epoch``. ``limit_batches``
    (``trainer.limit_train_batches``: an epoch may end before the loader is exhausted) is set by the datamodule."""

    limit_batches: int | float = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, which torch 2.14 warns is deprecated
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)

    def batches_per_epoch(self) -> int:
        """What Lightning trains per epoch (its ``limit_train_batches`` rule)."""
        n, limit = len(self), self.limit_batches
        return min(n, limit) if isinstance(limit, int) else int(n * limit)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.sampler.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        epoch = int(state.pop("epoch", self.sampler.epoch))
        if state and batches_yielded(state) >= self.batches_per_epoch():
            epoch, state = epoch + 1, {}  # that epoch was finished: the next one from its start
        saved_workers = loader_workers(state)
        if state and saved_workers != self.num_workers:  # torchdata cannot move a position between worker counts
            raise ValueError(
                f"this checkpoint was saved in the middle of epoch {epoch} by a training loader with "
                f"dataset.num_workers={saved_workers}, and the position in an epoch can be restored only with as "
                f"many loader workers: resume with dataset.num_workers={saved_workers} (another count may follow "
                "from the next checkpoint at an epoch's end, last.ckpt)")
        self.sampler.set_epoch(epoch)
        super().load_state_dict(state)


def loader_workers(state: dict[str, Any]) -> int:
    """How many loader workers a ``StatefulDataLoader`` state was saved with (torchdata 0.11: one snapshot each)."""
    return len(state["_snapshot"]["_worker_snapshots"]) if "_snapshot" in state else 0


def batches_yielded(state: dict[str, Any]) -> int:
    """How many batches of its epoch a ``StatefulDataLoader`` state had handed out (torchdata 0.11's keys:
    ``_num_yielded`` without workers, ``_snapshot._snapshot_step`` plus ``_steps_since_snapshot`` with them)."""
    if "_num_yielded" in state:
        return int(state["_num_yielded"])
    return int(state["_snapshot"]["_snapshot_step"]) + int(state.get("_steps_since_snapshot", 0))


class GridBoxDataModule(pl.LightningDataModule):
    """``train_source``/``val_source`` are callables returning ``list[Sample]`` (``problems=`` collects what is
    wrong with the labels); they are called in ``prepare_data`` (rank zero: generation, downloads of nothing)
    and again in ``setup``. ``strict``: every data problem is an error at start-up, and every image is decoded
    once before training to find them. ``decode``: ``cpu`` (workers do everything) or ``gpu`` (workers read bytes;
    the rest runs batched on the device the batch is moved to). ``seed``: the training order and augmentation
    (None: 0, as Lightning's own distributed sampler does; every rank must shuffle alike). ``prefetch``: where a
    device path builds its batches on a CUDA device, ``stream`` or ``thread`` (:mod:`gridface.data.prefetch`)."""

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
        seed: int | None = None,
        prefetch: str = "stream",
    ) -> None:
        super().__init__()
        if decode not in DECODE_CHOICES:
            raise ValueError(f"dataset.decode = {decode!r}: must be one of {', '.join(DECODE_CHOICES)}")
        if prefetch not in PREFETCH_CHOICES:
            raise ValueError(f"dataset.prefetch = {prefetch!r}: must be one of {', '.join(PREFETCH_CHOICES)}")
        self.decode = decode
        self.prefetch = prefetch
        self._said = WarningCache()  # notes logged once per datamodule (the train and val loaders both ask)
        self.train_source, self.val_source = train_source, val_source
        self.encoder = encoder
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        # The GPU path reads the same augment group; what it cannot reproduce is an error naming the key, here.
        self.augment = build_augment(augment) if decode == "cpu" else None
        self.device_batches = DeviceBatchBuilder(self.input_hw, encoder, DeviceAugment.from_transforms(augment),
                                                 min_box_size) if decode != "cpu" else None
        self.min_box_size = min_box_size
        self.strict = strict
        self.seed = int(seed) if seed is not None else 0  # the same on every DDP rank, as it must be
        if self.device_batches is not None:
            self.device_batches.seed = self.seed
        self.problems = DataProblems(strict=strict)
        # where batches go when no trainer is attached (benchmarks, code iterating the loaders itself)
        self.device: torch.device | None = None
        self.train_set: DetectionDataset | EncodedDataset | None = None
        self.val_set: DetectionDataset | EncodedDataset | None = None

    def prepare_data(self) -> None:
        self.train_source(problems=DataProblems(quiet=True))
        self.val_source(problems=DataProblems(quiet=True))

    def load(self, source: Callable[..., list[Sample]], split: str) -> list[Sample]:
        samples = source(problems=self.problems)
        trainer = self.trainer  # None: loaders used without a Trainer (benchmarks)
        if split == "train" or trainer is None or trainer.limit_val_batches != 0:
            for _, message in split_faults(samples, "training" if split == "train" else "validation"):
                raise ValueError(message)  # at start-up, not after hours on background or an AP of nothing
        if self.strict:
            scan_images(samples, self.problems, desc=f"dataset.strict: checking the {split} images")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.decode != "cpu":
            hw = self.input_hw if self.decode == "hybrid" else None
            if stage in (None, "fit") and self.train_set is None:
                self.train_set = EncodedDataset(self.load(self.train_source, "train"), "train", train=True,
                                                letterbox_hw=hw)
            if stage in (None, "fit", "validate") and self.val_set is None:
                self.val_set = EncodedDataset(self.load(self.val_source, "val"), "val", letterbox_hw=hw)
            return
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = DetectionDataset(self.load(self.train_source, "train"), self.input_hw, self.encoder,
                                              self.augment, "train", min_box_size=self.min_box_size)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = DetectionDataset(self.load(self.val_source, "val"), self.input_hw, self.encoder, None,
                                            "val", min_box_size=self.min_box_size)

    def collate_fn(self, ds: DetectionDataset | EncodedDataset) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        if isinstance(ds, EncodedDataset):
            return partial(collate_encoded, num_classes=self.encoder.num_classes, train=ds.train)
        return collate

    def train_dataloader(self) -> DataLoader:
        """The resumable training loader: torchdata's ``StatefulDataLoader`` over an :class:`EpochSampler` for
        this rank (Lightning injects no sampler of its own: it is already a ``DistributedSampler``)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self.train_set.seed = self.seed % 2**63
        sampler = EpochSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        loader = ResumableLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                                 num_workers=self.num_workers, collate_fn=self.collate_fn(self.train_set),
                                 persistent_workers=self.num_workers > 0, drop_last=False,
                                 pin_memory=self.cuda_device is not None)
        if trainer is not None:
            loader.limit_batches = trainer.limit_train_batches
            # the epoch Lightning trains next (what it passes to set_epoch, after the loader's first indices are
            # drawn when there are workers): a resumed run's epoch, or the one after a checkpoint taken at validation
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return self.prefetched(loader)

    def val_dataloader(self) -> DataLoader:
        return self.prefetched(DataLoader(
            self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers,
            collate_fn=self.collate_fn(self.val_set), persistent_workers=self.num_workers > 0, drop_last=False,
            pin_memory=self.cuda_device is not None))

    @property
    def cuda_device(self) -> torch.device | None:
        """The CUDA device this datamodule's trainer (else ``self.device``) runs on; None on the CPU."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        return device if device is not None and torch.device(device).type == "cuda" else None

    def prefetched(self, loader: DataLoader) -> Any:
        """On a CUDA device, a device path's loader builds each batch on a side stream as it is fetched
        (:class:`DevicePrefetchLoader`); otherwise the loader as it is (built in ``on_after_batch_transfer``)."""
        if self.device_batches is None or self.cuda_device is None:
            if self.prefetch == "thread":  # said, not silently ignored
                where = ("dataset.decode=cpu builds every batch in the loader workers" if self.device_batches is None
                         else "without a CUDA device the batches are built in place")
                self._said.info(f"dataset.prefetch=thread has no effect here: {where} (it applies to "
                                "dataset.decode=gpu|hybrid on a CUDA device)")
            return loader
        return DevicePrefetchLoader(loader, self.cuda_device, self.device_batches, threaded=self.prefetch == "thread")

    def batches_on(self, loader: Iterable[Any], device: torch.device | str) -> Iterator[Any]:
        """A loader's batches as the steps see them, for code that iterates a loader outside the Trainer's loops
        (the prune callback's Taylor criterion, QAT's calibration): moved to ``device``, and built there on the
        device paths."""
        for batch in loader:
            batch = join_training_stream(batch)  # a prefetched batch: built on the trainer's device, waited for
            yield self.on_after_batch_transfer(move_data_to_device(batch, torch.device(device)), 0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device paths: the batch is on the device now; decode, letterbox, augment (training batches) and encode it
        there, or (on a GPU) join the batch :class:`DevicePrefetchLoader` built. The CPU path's batches pass
        unchanged."""
        if self.device_batches is not None and DeviceBatchBuilder.is_encoded(batch):
            batch = self.device_batches(batch)
        elif isinstance(batch, PendingBatch):  # built on the side stream
            batch = join_training_stream(batch)
        else:
            return batch
        # Lightning's input conversion (true precisions) saw the batch before its build: it comes now
        return self.trainer.precision_plugin.convert_input(batch) if self.trainer is not None else batch


def training_batches(datamodule: pl.LightningDataModule, device: torch.device | str) -> Iterable[Any]:
    """The training loader's batches as the steps see them, for code that reads them outside the Trainer's loops
    (the prune callback's Taylor criterion, QAT's calibration): built and moved by :meth:`GridBoxDataModule.batches_on`;
    a datamodule of another kind: its loader as it is."""
    loader = datamodule.train_dataloader()
    return datamodule.batches_on(loader, device) if isinstance(datamodule, GridBoxDataModule) else loader
