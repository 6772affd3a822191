"""The interface every model backend implements (PyTorch, ONNX Runtime, TensorRT), in a module of its own so that
each backend module imports it and :func:`gridface.inference.backends.load_backend` imports the backends, never the
other way round."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
