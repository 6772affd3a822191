"""One interface over every model format, so evaluation and inference preprocess and post-process
the same way whatever runs the network.

A backend takes a float32 batch ``[N, 3, H, W]`` in [0, 1] (letterboxed RGB) and returns the raw
``cov`` and ``bbox`` maps as numpy arrays; it also carries what post-processing needs (input size,
class names, stride, clustering settings), read from the checkpoint or from the metadata JSON written
beside an exported model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ONNX_INPUT = "input_1"
ONNX_OUTPUTS = ("output_cov/Sigmoid", "output_bbox/BiasAdd")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def metadata_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".json")


@dataclass
class ModelBackend:
    """Base: subclasses implement ``run``. ``input_hw`` is the network input (H, W)."""

    path: Path
    input_hw: tuple[int, int]
    class_names: list[str]
    stride: int = 16
    postprocess: dict[str, Any] = field(default_factory=dict)
    format: str = "checkpoint"
    data: dict[str, Any] | None = None  # the dataset config the model was trained on (data.config)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class TorchBackend(ModelBackend):
    def __init__(self, path: str | Path, device: str = "cpu", module: Any = None) -> None:
        """``module``: an in-memory GridBoxModule (e.g. just pruned) instead of loading ``path``."""
        from gridface.module import GridBoxModule

        module = (module or GridBoxModule.from_checkpoint(path)).eval().to(device)
        hp = module.hparams
        super().__init__(Path(path), module.input_hw, list(module.class_names), module.net.stride,
                         dict(hp.get("postprocess") or {}), "checkpoint", hp.get("data"))
        self.net = module.net
        self.device = device

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch  # here, not at the top: ONNX and TensorRT deployments run without torch

        with torch.inference_mode():
            out = self.net.predict(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return out["cov"].float().cpu().numpy(), out["bbox"].float().cpu().numpy()


class OnnxBackend(ModelBackend):
    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 spin: bool = True) -> None:
        """``spin=False``: ORT's idle threads sleep instead of spin-waiting between runs, leaving the cores to the
        decoding and writing threads that run beside the model (``gridface.infer``)."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("ONNX models need onnxruntime (CPU) or onnxruntime-gpu: pip install onnxruntime") from e
        path = Path(path)
        meta = read_metadata(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ort.get_available_providers())
        check_onnx_contract(path, self.session, tuple(meta["input_hw"]))
        super().__init__(path, tuple(meta["input_hw"]), list(meta["class_names"]), int(meta.get("stride", 16)),
                         dict(meta.get("postprocess") or {}), "onnx", meta.get("data"))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(images, np.float32)})
        return cov, bbox


def check_onnx_contract(path: Path, session: Any, input_hw: tuple[int, int]) -> None:
    """The model must take ``ONNX_INPUT`` [N, 3, H, W] at its metadata's input size and give ``ONNX_OUTPUTS``;
    anything else is an error saying what was expected and what the file has."""
    expected = f"expected input '{ONNX_INPUT}' [N, 3, {input_hw[0]}, {input_hw[1]}] and outputs {list(ONNX_OUTPUTS)}"
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != ONNX_INPUT:
        raise ValueError(f"{path}: inputs {[i.name for i in inputs]}: {expected}; export with gridface.export")
    shape = list(inputs[0].shape)
    fixed = [d if isinstance(d, int) else None for d in shape]
    if len(shape) != 4 or fixed[1] not in (3, None) or any(
            f is not None and f != want for f, want in zip(fixed[2:], input_hw, strict=True)):
        raise ValueError(f"{path}: input '{ONNX_INPUT}' has shape {shape}: {expected} (the size in "
                         f"{metadata_path(path).name})")
    names = [o.name for o in session.get_outputs()]
    missing = [n for n in ONNX_OUTPUTS if n not in names]
    if missing:
        raise ValueError(f"{path}: outputs {names} lack {missing}: {expected}; export with gridface.export")


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    meta_file = metadata_path(model_path)
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{meta_file} not found: gridface.export writes it beside every exported model (input size, "
            "class names, post-processing); keep the two together")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}:{e.lineno}: invalid JSON ({e.msg})") from None


def load_backend(path: str | Path, device: str = "cpu", threads: int | None = None, spin: bool = True
                 ) -> ModelBackend:
    """Pick the backend by file type: ``.ckpt`` (PyTorch), ``.onnx`` (ONNX Runtime), ``.engine``/``.plan``
    (TensorRT)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth"):
        return TorchBackend(path, device)
    if suffix == ".onnx":
        return OnnxBackend(path, threads=threads, spin=spin)
    if suffix in ENGINE_SUFFIXES:
        from gridface.inference.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path)
    raise ValueError(f"{path}: unsupported model type '{suffix}' (expected .ckpt, .onnx, .engine or .plan)")
