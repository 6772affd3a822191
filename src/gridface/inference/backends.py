"""One interface over every model format, so evaluation and inference preprocess and post-process
the same way whatever runs the network.

A backend takes a float32 batch ``[N, 3, H, W]`` in [0, 1] (letterboxed RGB) and returns the raw
``cov`` and ``bbox`` maps as numpy arrays; it also carries what post-processing needs (input size,
class names, stride, clustering settings), read from the checkpoint or from the metadata JSON written
beside an exported model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gridface.contract import (
    ENGINE_SUFFIXES,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    check_onnx_contract,
    fixed_batch,
    read_metadata,
    unreadable_onnx,
)
from gridface.inference.base import ModelBackend, run_in_batches


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
        with unreadable_onnx(path):
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=providers or ort.get_available_providers())
        check_onnx_contract(path, self.session, tuple(meta["input_hw"]))
        self.fixed_batch = fixed_batch(self.session.get_inputs()[0].shape)
        super().__init__(path, tuple(meta["input_hw"]), list(meta["class_names"]), int(meta["stride"]),
                         dict(meta.get("postprocess") or {}), "onnx", meta.get("data"))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a fixed-batch model (ONNX Runtime refuses any other N): batches of its size, the last one zero-padded
        return run_in_batches(np.ascontiguousarray(images, np.float32), self._run, self.fixed_batch, pad=True)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: images})
        return cov, bbox


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
