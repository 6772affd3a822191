"""``Detector``: the Python API. Any model format in, boxes in original image coordinates out.

    from gridface import Detector
    det = Detector.load("model.onnx")          # or .ckpt, or a TensorRT engine
    result = det("photo.jpg")                  # a path, an RGB/BGR numpy array, or a PIL image
    results = det(["a.jpg", "b.jpg"])          # batches
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridface.data.dataset import read_image_rgb
from gridface.data.transforms import letterbox, to_tensor_layout
from gridface.inference.backends import ModelBackend, load_backend
from gridface.postprocess import Detections, GridBoxDecoder

ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image


class Detector:
    """Letterbox -> model -> GridBox decoding -> boxes mapped back to the original image.

    Post-processing defaults to the model's own settings (checkpoint hyper-parameters or export
    metadata); keyword overrides replace single keys, e.g. ``clustering="nms"``.
    """

    def __init__(self, backend: ModelBackend, **postprocess: Any) -> None:
        self.backend = backend
        self.postprocess = {**backend.postprocess, **postprocess}
        self.decoder = GridBoxDecoder(stride=backend.stride, **self.postprocess)
        self.class_names = backend.class_names

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, **postprocess: Any) -> Detector:
        return cls(load_backend(path, device, threads), **postprocess)

    @staticmethod
    def to_rgb(image: ImageLike, color: str = "RGB") -> np.ndarray:
        """Paths are read from disk; arrays are HxWx3 uint8 in ``color`` order (or HxW gray); PIL any mode."""
        if isinstance(image, str | Path):
            arr = read_image_rgb(image)
            if arr is None:
                raise ValueError(f"cannot read image {image} (missing, corrupt or not an image)")
            return arr
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
            return np.asarray(image.convert("RGB"))
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 image array, got shape {arr.shape}")
        arr = arr[..., :3]
        if color.upper() == "BGR":
            arr = arr[..., ::-1]
        elif color.upper() != "RGB":
            raise ValueError(f"color must be 'RGB' or 'BGR', got '{color}'")
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)

    def detect_rgb(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Batch of RGB uint8 arrays -> detections in each image's own coordinates."""
        if not images:
            return []
        prepared = [letterbox(img, self.backend.input_hw) for img in images]
        batch = np.stack([to_tensor_layout(p[0]) for p in prepared])
        cov, bbox = self.backend.run(batch)
        out = []
        for det, (_, lb) in zip(self.decoder(cov, bbox, self.backend.input_hw), prepared, strict=True):
            out.append(Detections(lb.to_original(det.boxes), det.scores, det.labels))
        return out

    def __call__(self, images: ImageLike | Sequence[ImageLike], color: str = "RGB") -> Detections | list[Detections]:
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        result = self.detect_rgb([self.to_rgb(i, color) for i in items])
        return result[0] if single else result
