"""The device data paths' reading half: what loader workers ship for the device to finish.

``dataset.decode=gpu``: workers read file bytes and labels; JPEGs are decoded on the device (nvJPEG).
``dataset.decode=hybrid``: workers decode with the CPU path's reader (OpenCV's libjpeg-turbo) and letterbox by its
rule, and ship uint8 pixels at the network input size (a quarter of the CPU path's float32 bytes, stacked into
one pinned transfer); augmentation and target encoding run on the device. Which is faster depends on the
machine's cores against its GPU's decoder (experiments/gpu_*).

Why: a CPU worker decodes, letterboxes, augments and encodes ~39 images/s, and one GPU trains on ~1,800. Here a
worker only reads the file, checks the bytes' structure (:func:`gridface.data.images.jpeg_problem`: a truncated
JPEG is reported, never decoded into grey) and their compressed data (:func:`gridface.data.images.check_jpeg_data`,
an entropy decode at 1/8 scale: damaged data is reported, never decoded into invented pixels) and ships them; the
batch is decoded on the device in one ``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA; on CPU tensors the same
call decodes on the CPU, which is how the tests run). Other formats (PNG, ...) are decoded in the worker by the CPU
path's reader and shipped as pixels.

The CPU path's guarantees hold: an image that cannot be used is reported with its file and the label line that
lists it, and skipped. A batched decode that raises is retried image by image; an image the device cannot decode
is tried with the CPU path's reader (OpenCV, the reference: nvJPEG refuses some valid files), and only an image
neither can decode is skipped.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from gridface.data.images import (
    EMPTY,
    ORIENTATION_STEPS,
    TRUNCATED,
    ImageReadError,
    check_jpeg_data,
    decode_image_rgb,
    exif_orientation,
    image_format,
    jpeg_problem,
    read_image_bgr,
    read_image_bytes,
)
from gridface.data.sample import Sample
from gridface.data.transforms import Letterbox, letterbox

log = logging.getLogger(__name__)

JPEG, PIXELS = "jpeg", "pixels"


class EncodedImage:
    """One image as a worker ships it: ``kind`` JPEG (``data`` = the file's bytes, uint8 [n]) or pixels (``data`` =
    RGB uint8 [3, H, W]); ``orientation`` the EXIF orientation (1-8) to apply after decoding, as OpenCV does."""

    __slots__ = ("kind", "data", "orientation")

    def __init__(self, kind: str, data: torch.Tensor, orientation: int = 1) -> None:
        self.kind, self.data, self.orientation = kind, data, orientation


class HostImages:
    """The encoded images of a batch, packed into one uint8 buffer (``images`` gives them back as views of it). One
    buffer, because a loader worker shares each tensor it returns through its own shared-memory file: a batch of 512
    images as 512 tensors ran a worker out of file descriptors (``ulimit -n`` 1024), and torch's loader then waited
    for the batch forever. A plain class on purpose: Lightning's batch transfer moves tensors inside dicts, lists and
    dataclasses, and ``decode_jpeg`` wants its byte tensors on the CPU whatever the device."""

    __slots__ = ("buffer", "layout")

    def __init__(self, images: list[EncodedImage]) -> None:
        self.buffer = torch.cat([im.data.reshape(-1) for im in images]) if images else torch.empty(0, dtype=torch.uint8)
        self.layout: list[tuple[str, int, tuple[int, ...], int]] = []  # kind, offset, shape, orientation
        offset = 0
        for im in images:
            self.layout.append((im.kind, offset, tuple(im.data.shape), im.orientation))
            offset += im.data.numel()

    @property
    def images(self) -> list[EncodedImage]:
        return [EncodedImage(kind, self.buffer[offset:offset + math.prod(shape)].view(shape), orientation)
                for kind, offset, shape, orientation in self.layout]

    def __len__(self) -> int:
        return len(self.layout)


def read_encoded(path: str | Path, passed: dict[str, int] | None = None) -> EncodedImage:
    """What a worker ships for one file: JPEG bytes whose structure is whole, or decoded pixels for other formats.
    :class:`ImageReadError` (missing, empty, truncated, corrupt, not an image, undecodable) as the CPU path raises
    it. ``passed``: the CRC-32 of each file's bytes when their compressed data last passed the check (about half a
    decode): bytes that passed are not checked again, a file that changed since is (and a pass is recorded)."""
    data = read_image_bytes(path)
    if not data:
        raise ImageReadError(path, EMPTY, "0 bytes")
    if image_format(data) == "jpeg":
        problem = jpeg_problem(data)
        if problem:
            raise ImageReadError(path, TRUNCATED, problem)
        crc = zlib.crc32(data) if passed is not None else None
        if passed is None or passed.get(str(path)) != crc:
            check_jpeg_data(data, path)  # the device decoder would decode damaged data into invented pixels
            if passed is not None:
                passed[str(path)] = crc
        return EncodedImage(JPEG, torch.frombuffer(bytearray(data), dtype=torch.uint8), exif_orientation(data))
    pixels = decode_image_rgb(data, path)  # the CPU path's reader: its checks and its error kinds
    return EncodedImage(PIXELS, torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))


def read_letterboxed(path: str | Path, input_hw: tuple[int, int]) -> tuple[torch.Tensor, Letterbox]:
    """What a ``dataset.decode=hybrid`` worker ships for one file: RGB uint8 ``[3, H, W]`` at the network input
    size, decoded by the CPU path's reader (its checks and error kinds: a truncated JPEG is an error, never grey
    pixels) and letterboxed by its rule (the same pixels as the CPU path before augmentation)."""
    net, lb = letterbox(read_image_bgr(path), input_hw)  # BGR, then one copy to RGB CHW (what cvtColor would do)
    return torch.from_numpy(np.ascontiguousarray(net.transpose(2, 0, 1)[::-1])), lb


class EncodedDataset(Dataset):
    """Worker side of the device paths: an image's checked bytes (``decode=gpu``) or its letterboxed uint8 pixels
    (``letterbox_hw`` given: ``decode=hybrid``), and its labels.

    An unusable file gives a skip record (logged once per worker, with the label line that lists it) that
    :func:`collate_encoded` drops and counts, as :class:`gridface.data.dataset.DetectionDataset` does.
    """

    def __init__(self, samples: list[Sample], name: str = "dataset", train: bool = False,
                 letterbox_hw: tuple[int, int] | None = None) -> None:
        if not samples:
            raise ValueError(f"{name}: no samples; check the dataset paths")
        self.samples = samples
        self.name = name
        self.train = train
        self.letterbox_hw = (int(letterbox_hw[0]), int(letterbox_hw[1])) if letterbox_hw else None
        self._reported: set[int] = set()
        self._data_passed: dict[str, int] = {}  # CRC-32 of the JPEGs whose data passed the check in this worker

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: an index, or ``(epoch, index)`` from the resumable sampler (kept with the item: the device
        step draws the batch's augmentation from it)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = self.samples[index]
        try:
            if self.letterbox_hw is not None:
                pixels, lb = read_letterboxed(s.image, self.letterbox_hw)
                return {"letterboxed": pixels, "letterbox": lb, "sample": s, "key": (epoch, index)}
            encoded = read_encoded(s.image, self._data_passed)
        except ImageReadError as e:
            if index not in self._reported:
                self._reported.add(index)
                log.warning("%s: skipping image %s%s", self.name, e, f" (listed at {s.origin})" if s.origin else "")
            return {"skip": {"kind": e.kind, "path": str(s.image), "origin": s.origin}}
        return {"encoded": encoded, "sample": s, "key": (epoch, index)}


def collate_encoded(items: list[dict[str, Any]], num_classes: int | None = None, train: bool = False
                    ) -> dict[str, Any]:
    """A device-path batch: the encoded images (:class:`HostImages`, left on the host), or the letterboxed pixels
    (``letterboxed`` uint8 ``[B, 3, H, W]``, stacked into shared memory by torch's own collate, and ``letterbox``
    per image), and the boxes of all images concatenated (``boxes`` [M, 4] original pixels as float32 bits in
    int32, ``labels``, ``ignore``, ``box_image`` the image of each box), which Lightning moves to the device.
    Skipped files are dropped and listed in ``skips``; the original ground truth (``gt_*``, numpy) and
    ``path``/``origin`` stay per image on the host."""
    kept = [it for it in items if "skip" not in it]
    skips = [it["skip"] for it in items if "skip" in it]
    batch: dict[str, Any] = {"skipped": len(skips), "skips": skips}
    if not kept:
        return batch
    samples: list[Sample] = [it["sample"] for it in kept]
    if num_classes is not None:
        for s in samples:
            if len(s.labels) and not (s.labels.min() >= 0 and s.labels.max() < num_classes):
                raise ValueError(f"{s.image}: label outside [0, {num_classes})")
    counts = [len(s.boxes) for s in samples]
    if "letterboxed" in kept[0]:
        batch["letterboxed"] = default_collate([it["letterboxed"] for it in kept])
        batch["letterbox"] = [it["letterbox"] for it in kept]
    else:
        batch["host"] = HostImages([it["encoded"] for it in kept])
    batch.update({
        # as their float32 bits: Lightning converts a batch's float tensors for true precisions (bf16-true, 64-true)
        # before the transfer, and would round the boxes before the build (the built batch is converted after it)
        "boxes": torch.from_numpy(np.concatenate([s.boxes for s in samples]).astype(np.float32).reshape(-1, 4)
                                  ).view(torch.int32),
        "labels": torch.from_numpy(np.concatenate([s.labels for s in samples])),
        "ignore": torch.from_numpy(np.concatenate([s.ignore for s in samples])),
        "box_image": torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long)),
        "gt_boxes": [s.boxes for s in samples],
        "gt_labels": [s.labels for s in samples],
        "gt_ignore": [s.ignore for s in samples],
        "path": [str(s.image) for s in samples],
        "origin": [s.origin for s in samples],
        "keys": [it.get("key", (0, i)) for i, it in enumerate(kept)],
        "train": train,
    })
    return batch


def decode_images(images: Sequence[EncodedImage], device: torch.device | str, paths: Sequence[str] | None = None
                  ) -> list[torch.Tensor | ImageReadError]:
    """RGB uint8 ``[3, H, W]`` on ``device`` per image (EXIF orientation applied), or the :class:`ImageReadError`
    saying why it could not be decoded. JPEGs are decoded in one batched call; if it raises, one by one."""
    device = torch.device(device)
    paths = list(paths) if paths is not None else ["<bytes>"] * len(images)
    out: list[torch.Tensor | ImageReadError] = []
    jpegs = [i for i, im in enumerate(images) if im.kind == JPEG]
    decoded: dict[int, torch.Tensor | ImageReadError] = {}
    if jpegs:
        try:
            decoded = dict(zip(jpegs, _decode_jpeg([images[i].data for i in jpegs], device), strict=True))
        except (RuntimeError, ValueError):  # one bad file fails the whole call: find it
            decoded = {i: _decode_one(images[i], device, paths[i]) for i in jpegs}
    for i, im in enumerate(images):
        if im.kind == PIXELS:
            out.append(im.data.to(device, non_blocking=True))
            continue
        img = decoded[i]
        if isinstance(img, torch.Tensor):
            img = apply_orientation(img, im.orientation)
        elif isinstance(img, np.ndarray):  # decoded by the CPU reader, which applied the orientation itself
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device)
        out.append(img)
    return out


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec, each call
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_one(image: EncodedImage, device: torch.device, path: str) -> torch.Tensor | np.ndarray | ImageReadError:
    """One JPEG on the device; else RGB HWC pixels from the CPU path's reader; else the error."""
    try:
        return _decode_jpeg([image.data], device)[0]
    except (RuntimeError, ValueError) as e:
        device_error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    try:
        pixels = decode_image_rgb(image.data.numpy().tobytes(), path)
    except ImageReadError as e:
        return ImageReadError(path, e.kind, f"{e.detail}; {device.type} decoder: {device_error}")
    log.warning("%s: the %s JPEG decoder failed (%s); decoded on the CPU instead", path, device.type, device_error)
    return pixels


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a CHW image, as OpenCV's reader does (:data:`ORIENTATION_STEPS`)."""
    transpose, flip_rows, flip_columns = ORIENTATION_STEPS.get(orientation, (False, False, False))
    if transpose:
        image = image.transpose(-1, -2)
    flips = [dim for dim, flip in ((-2, flip_rows), (-1, flip_columns)) if flip]
    return image.flip(flips) if flips else image
