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

from gridface.data.images import to_rgb
from gridface.data.transforms import Letterbox, letterbox, to_tensor_layout
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
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, spin: bool = True,
             **postprocess: Any) -> Detector:
        return cls(load_backend(path, device, threads, spin), **postprocess)

    @staticmethod
    def to_rgb(image: ImageLike, color: str = "RGB") -> np.ndarray:
        """A path (read as in training, EXIF applied), a PIL image (EXIF applied) or an array (HxW, HxWx1|3|4;
        uint8, uint16, or float in [0, 1]; ``color`` order) -> RGB uint8; anything else is a clear error."""
        return to_rgb(image, color)

    def prepare(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The network input of one RGB image (CHW float, letterboxed as in training) and how it maps back.
        Thread-safe: ``gridface.infer`` runs it in the reader threads, beside the model."""
        net_img, lb = letterbox(image_rgb, self.backend.input_hw)
        return to_tensor_layout(net_img), lb

    def run(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The model on prepared inputs: raw ``cov`` and ``bbox`` maps of the batch."""
        return self.backend.run(np.stack(inputs))

    def decode(self, cov: np.ndarray, bbox: np.ndarray, letterboxes: Sequence[Letterbox]) -> list[Detections]:
        """Raw maps -> detections in each original image's coordinates (thread-safe, numpy)."""
        return [Detections(lb.to_original(det.boxes), det.scores, det.labels)
                for det, lb in zip(self.decoder(cov, bbox, self.backend.input_hw), letterboxes, strict=True)]

    def detect_rgb(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Batch of RGB uint8 arrays -> detections in each image's own coordinates."""
        if not images:
            return []
        prepared = [self.prepare(img) for img in images]
        cov, bbox = self.run([p[0] for p in prepared])
        return self.decode(cov, bbox, [p[1] for p in prepared])

    def __call__(self, images: ImageLike | Sequence[ImageLike], color: str = "RGB") -> Detections | list[Detections]:
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        result = self.detect_rgb([self.to_rgb(i, color) for i in items])
        return result[0] if single else result
