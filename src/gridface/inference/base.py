"""The interface every model backend implements (PyTorch, ONNX Runtime, TensorRT), in a module of its own so that
each backend module imports it and :func:`gridface.inference.backends.load_backend` imports the backends, never the
other way round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Maps = tuple[np.ndarray, np.ndarray]


@dataclass
class ModelBackend:
    """Base: subclasses implement ``run``. ``input_hw`` is the network input (H, W)."""

    path: Path
    input_hw: tuple[int, int]
    class_names: list[str]
    stride: int
    postprocess: dict[str, Any] = field(default_factory=dict)
    format: str = "checkpoint"
    data: dict[str, Any] | None = None  # the dataset config the model was trained on (data.config)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def run_in_batches(images: np.ndarray, run: Callable[[np.ndarray], Maps], size: int | None, pad: bool) -> Maps:
    """``run`` over batches of at most ``size`` images (one call when ``size`` is None or the batch fits), the maps
    joined. ``pad``: the model takes exactly ``size`` (a static export), so the last batch is zero-padded to it."""
    n = len(images)
    if size is None or n == size or (n < size and not pad):
        return run(images)
    if pad:
        padded = np.zeros((-(-n // size) * size, *images.shape[1:]), images.dtype)
        padded[:n] = images
        images = padded
    outs = [run(images[i:i + size]) for i in range(0, len(images), size)]
    return np.concatenate([o[0] for o in outs])[:n], np.concatenate([o[1] for o in outs])[:n]
