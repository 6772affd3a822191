"""The device data paths' assembly: a worker's batch (bytes, or letterboxed pixels, and labels) -> the batch the
module trains on.

Runs where the batch landed (``GridBoxDataModule.on_after_batch_transfer``: the GPU in training, CPU tensors in the
tests): decode (:mod:`gridface.data.device_decode`), letterbox and augment (:mod:`gridface.data.device_augment`),
the box rules of :class:`gridface.data.dataset.DetectionDataset` (clip to the image and count the clipped, drop
boxes without area, letterbox, augment, clip and drop again, boxes under ``min_box_size`` become ignore boxes) and
the GridBox targets (:mod:`gridface.targets_torch`). The batch has the keys of the CPU path's ``collate``, so the
module's training and validation steps do not know which path made it. Nothing here waits for the device: box
counts and image sizes are host values, masks replace dropping.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from gridface.data.check import outside_record
from gridface.data.device_augment import DeviceAugment, letterbox_batch
from gridface.data.device_decode import HostImages, decode_images
from gridface.data.images import ImageReadError
from gridface.targets import GridBoxTargetEncoder
from gridface.targets_torch import encode_batch

log = logging.getLogger(__name__)


class DeviceBatchBuilder:
    """Turns :func:`gridface.data.device_decode.collate_encoded` batches into training/validation batches on the
    batch's device. ``augment`` applies to batches collated with ``train=True`` only, as on the CPU path."""

    def __init__(self, input_hw: tuple[int, int], encoder: GridBoxTargetEncoder | None,
                 augment: DeviceAugment | None = None, min_box_size: float = 0.0) -> None:
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.encoder = encoder
        self.augment = augment
        self.min_box_size = float(min_box_size)
        self.seed = 0  # with each batch's (epoch, index) keys: its augmentation, the same before and after a resume
        self._reported: set[str] = set()

    def generator(self, keys: list[tuple[int, int]]) -> torch.Generator:
        """The random stream of one batch's augmentation: a function of the seed and the batch's (epoch, index)
        keys alone, not of how many batches this process built before (a resumed run draws the same)."""
        entropy = np.random.SeedSequence([self.seed % 2**63, *(int(v) for key in keys for v in key)])
        return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] % 2**63))

    @staticmethod
    def is_encoded(batch: Any) -> bool:
        """A batch of :func:`gridface.data.device_decode.collate_encoded` not built yet."""
        return isinstance(batch, dict) and (isinstance(batch.get("host"), HostImages) or "letterboxed" in batch)

    def pixels(self, batch: dict[str, Any]) -> tuple[list[int], torch.Tensor | None, list, list[dict[str, Any]]]:
        """The images of the batch that could be used (their indices), as float32 ``[B, 3, H, W]`` in [0, 1] at the
        network input, their letterboxes, and the skip records (the loader's plus the files the device could not
        decode). ``hybrid`` batches arrive letterboxed (uint8); ``gpu`` batches are decoded and letterboxed here."""
        skips = list(batch["skips"])
        if "letterboxed" in batch:
            pixels: torch.Tensor = batch.pop("letterboxed")
            return list(range(pixels.shape[0])), pixels.float().div_(255.0), batch.pop("letterbox"), skips
        host: HostImages = batch.pop("host")
        paths, origins = batch["path"], batch["origin"]
        decoded = decode_images(host.images, batch["boxes"].device, paths)
        kept = [i for i, img in enumerate(decoded) if isinstance(img, torch.Tensor)]
        for i, img in enumerate(decoded):
            if isinstance(img, ImageReadError):
                skips.append({"kind": img.kind, "path": paths[i], "origin": origins[i]})
                if paths[i] not in self._reported:  # once a run, not every epoch
                    self._reported.add(paths[i])
                    log.warning("skipping image %s%s", img, f" (listed at {origins[i]})" if origins[i] else "")
        if not kept:
            return kept, None, [], skips
        images, letterboxes = letterbox_batch([decoded[i] for i in kept], self.input_hw)
        return kept, images, letterboxes, skips

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.is_encoded(batch):  # every file of the batch was unusable (or a CPU-path batch)
            return batch
        device = batch["boxes"].device
        paths = batch["path"]
        kept, images, letterboxes, skips = self.pixels(batch)
        origins = batch.pop("origin")
        out: dict[str, Any] = {"skipped": len(skips), "skips": skips}
        if not kept:
            return out
        # on the host, from the original ground truth and the decoded sizes: no wait for the device
        out["outside"] = [r for i, lb in zip(kept, letterboxes, strict=True)
                          if (r := outside_record(batch["gt_boxes"][i], (lb.width, lb.height), paths[i], origins[i]))]
        train = bool(batch.get("train"))
        augment = self.augment if train else None

        # Boxes: the rules of DetectionDataset.__getitem__, in float64 as numpy computes them there.
        boxes = batch["boxes"].view(torch.float32).to(torch.float64)  # float32 bits (collate_encoded)
        remap = torch.full((len(paths),), -1, dtype=torch.long)
        remap[kept] = torch.arange(len(kept))
        image_index = remap.to(device, non_blocking=True)[batch["box_image"]]
        in_batch = image_index >= 0
        image_index = image_index.clamp(min=0)
        geometry = torch.tensor([[lb.width, lb.height, lb.scale, lb.pad_x, lb.pad_y] for lb in letterboxes],
                                dtype=torch.float64).to(device, non_blocking=True)[image_index]
        bounds = geometry[:, [0, 1, 0, 1]]
        clipped = torch.minimum(torch.clamp_min(boxes, 0), bounds)
        n_clipped = (((clipped - boxes).abs() > 0.5).any(1) & in_batch).sum()
        valid = in_batch & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        net = clipped * geometry[:, 2:3] + geometry[:, [3, 4, 3, 4]]
        ignore = batch["ignore"].bool()
        if augment is not None:
            params = augment.sample(len(kept), self.generator([batch["keys"][i] for i in kept]))
            dev_params = params.to(device)
            images = augment.apply_images(images, dev_params)
            net = augment.transform_boxes(net, image_index, dev_params, self.input_hw)
            th, tw = self.input_hw
            net = torch.minimum(torch.clamp_min(net, 0), net.new_tensor([tw, th, tw, th]))
            valid = valid & (net[:, 2] > net[:, 0]) & (net[:, 3] > net[:, 1])
            out["augment"] = params
        if self.min_box_size > 0:
            size = torch.minimum(net[:, 2] - net[:, 0], net[:, 3] - net[:, 1])
            ignore = ignore | (size < self.min_box_size)

        out["image"] = images
        if self.encoder is not None:
            out.update(encode_batch(self.encoder, net, batch["labels"], ignore, image_index, len(kept),
                                    self.input_hw, valid=valid))
        out.update({
            "letterbox": letterboxes,
            "path": [paths[i] for i in kept],
            "clipped": n_clipped,
            # the boxes as trained on (network input pixels), with the mask of those kept: no device wait to drop
            "boxes": net.float(),
            "box_labels": batch["labels"],
            "box_ignore": ignore,
            "box_valid": valid,
            "box_image": image_index,
        })
        if augment is None:
            # Evaluation works in original image coordinates (the CPU path's gt_* without augmentation)
            for key in ("gt_boxes", "gt_labels", "gt_ignore"):
                out[key] = [batch[key][i] for i in kept]
        return out


def boxes_of(batch: dict[str, Any], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept boxes, labels and ignore flags of image ``index`` of a built batch, as numpy (waits for the
    device: for tests and debugging, not the training loop)."""
    sel = (batch["box_image"] == index) & batch["box_valid"]
    return (batch["boxes"][sel].cpu().numpy(), batch["box_labels"][sel].cpu().numpy(),
            batch["box_ignore"][sel].cpu().numpy())
