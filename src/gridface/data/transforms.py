"""Letterbox resize (the same in training, validation and inference) and the albumentations pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A

PAD_VALUE = 0


@dataclass
class Letterbox:
    """How an original image maps into the network input: ``input = original * scale + pad``."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original size
    height: int

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        return boxes * self.scale + np.array([self.pad_x, self.pad_y] * 2, np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        b = (boxes - np.array([self.pad_x, self.pad_y] * 2, np.float32)) / self.scale
        return np.clip(b, 0, np.array([self.width, self.height] * 2, np.float32))


# Below this scale the letterbox averages areas; bilinear would skip pixels.
AREA_BELOW_SCALE = 0.5


def letterbox_geometry(width: int, height: int, input_hw: tuple[int, int]) -> tuple[int, int, Letterbox]:
    """The letterbox rule, shared by the CPU path and the device path (``gridface.data.device_augment``) so
    both place an image identically: the resized size ``(nw, nh)`` and the mapping."""
    th, tw = input_hw
    scale = min(tw / width, th / height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    px, py = (tw - nw) // 2, (th - nh) // 2
    return nw, nh, Letterbox(scale, float(px), float(py), width, height)


def letterbox(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the image fits ``input_hw`` and pad the rest (centred)."""
    h, w = image.shape[:2]
    th, tw = input_hw
    nw, nh, lb = letterbox_geometry(w, h, input_hw)
    if (nw, nh) != (w, h):
        # Area averaging only where bilinear would skip pixels (under half size): at 1024x700 -> 736x416 it cost
        # 7.3 core-ms against 0.8 for bilinear, more than the rest of the preprocessing together.
        interp = cv2.INTER_AREA if lb.scale < AREA_BELOW_SCALE else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    px, py = int(lb.pad_x), int(lb.pad_y)
    if (nw, nh) != (tw, th):
        image = cv2.copyMakeBorder(image, py, th - nh - py, px, tw - nw - px, cv2.BORDER_CONSTANT,
                                   value=(PAD_VALUE,) * 3)
    return image, lb


def build_augment(
    transforms: Mapping[str, A.BasicTransform | None] | Sequence[A.BasicTransform] | None,
) -> A.Compose | None:
    """Compose albumentations transforms (instantiated from config; a mapping's ``None`` entries are
    disabled ones) with box handling: boxes are clipped to the image and those left with no area are
    dropped. Boxes that become too small are not dropped here: the dataset turns them into ignore boxes,
    so a face shrunk by augmentation is never trained as background."""
    import albumentations as A  # training only: deployment (letterbox) runs without it
    if isinstance(transforms, Mapping):
        transforms = [t for t in transforms.values() if t is not None]
    if not transforms:
        return None
    return A.Compose(
        list(transforms),
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "ignore"], clip=True),
    )


def to_tensor_layout(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 in [0, 1] (scale 1/255, no mean subtraction: DeepStream's contract), in one
    pass, into ``out`` (e.g. a slot of a batch array) when given."""
    if out is None:
        out = np.empty((image.shape[2], *image.shape[:2]), np.float32)
    np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=out, dtype=np.float32)
    return out
