"""``Detector``: the Python API. Any model format in, boxes in original image coordinates out.

    from gridface import Detector
    det = Detector.load("model.onnx")          # or .ckpt, or a TensorRT engine
    result = det("photo.jpg")                  # a path, an RGB/BGR numpy array, or a PIL image
    results = det(["a.jpg", "b.jpg"])          # batches
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridface.data.images import to_rgb
from gridface.data.transforms import Letterbox, letterbox, to_tensor_layout
from gridface.inference.backends import ModelBackend, load_backend
from gridface.postprocess import Detections, GridBoxDecoder, decoder_defaults

log = logging.getLogger(__name__)

ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image


def operating_point(model: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's post-processing with ``overrides``, its own ``score_threshold`` applied as the confidence cut
    unless the caller sets ``confidence_threshold`` or asks for another kind of score than it was chosen for."""
    post = {**model, **overrides}
    chosen = model.get("score_threshold")
    default = decoder_defaults()["score"]
    same_score = post.get("score", default) == model.get("score", default)
    if chosen is not None and "confidence_threshold" not in overrides:
        if same_score:
            post["confidence_threshold"] = max(float(post.get("confidence_threshold") or 0.0), float(chosen))
        else:
            log.warning("the model's score threshold %.4g was chosen for score=%s and does not apply to score=%s: "
                        "every box is kept; set postprocess.confidence_threshold= for a cut on this score",
                        float(chosen), model.get("score", default), post.get("score"))
    return post


class Detector:
    """Letterbox -> model -> GridBox decoding -> boxes mapped back to the original image.

    Post-processing defaults to the model's own settings (checkpoint hyper-parameters or export
    metadata); keyword overrides replace single keys, e.g. ``clustering="nms"``. Scores are in [0, 1] by default
    (``score="confidence"``; ``score="aggregate"`` gives TAO's summed coverage), and the model's own threshold
    (``score_threshold``, chosen on validation when it was trained) drops the weak boxes; ``confidence_threshold=``
    replaces it (``confidence_threshold=0`` keeps every box).
    """

    def __init__(self, backend: ModelBackend, **postprocess: Any) -> None:
        self.backend = backend
        self.postprocess = operating_point(backend.postprocess, postprocess)
        self.decoder = GridBoxDecoder(stride=backend.stride, **self.postprocess)
        self.class_names = backend.class_names
        self._buffers = threading.local()  # each calling thread's batch buffer (``run``)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, spin: bool = True,
             **postprocess: Any) -> Detector:
        GridBoxDecoder.warm_up()  # the compiled clustering loads beside the model, not on the first image
        return cls(load_backend(path, device, threads, spin), **postprocess)

    @staticmethod
    def to_rgb(image: ImageLike, color: str = "RGB") -> np.ndarray:
        """A path (read as in training, EXIF applied), a PIL image (EXIF applied) or an array (HxW, HxWx1|3|4;
        uint8, uint16, or float in [0, 1]; ``color`` order) -> RGB uint8; anything else is a clear error."""
        return to_rgb(image, color)

    def prepare(self, image: np.ndarray, color: str = "RGB") -> tuple[np.ndarray, Letterbox]:
        """One image letterboxed to the network input as in training (HWC uint8, RGB order; for a BGR image a
        channel-reversed view, no copy) and how it maps back. Thread-safe: ``gridface.infer`` runs it in the
        reader threads, beside the model."""
        net_img, lb = letterbox(image, self.backend.input_hw)
        return (net_img[..., ::-1] if color.upper() == "BGR" else net_img), lb

    def run(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The model on prepared images: raw ``cov`` and ``bbox`` maps of the batch. The images go straight into
        the batch as CHW float (one pass each, into a buffer the calling thread reuses, so no batch is copied or
        allocated again)."""
        h, w = self.backend.input_hw
        batch = getattr(self._buffers, "batch", None)
        if batch is None or batch.shape[0] < len(inputs):
            batch = self._buffers.batch = np.empty((len(inputs), 3, h, w), np.float32)
        for slot, image in zip(batch, inputs, strict=False):
            to_tensor_layout(image, out=slot)
        return self.backend.run(batch[: len(inputs)])

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
