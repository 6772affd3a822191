"""TensorRT engine backend (TensorRT 10 and 11 runtime API). Needs the tensorrt package and a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gridface.inference.backends import ONNX_INPUT, ONNX_OUTPUTS, ModelBackend, read_metadata

TENSORRT_HINT = (
    "TensorRT engines need NVIDIA TensorRT 10 or 11 (pip install tensorrt from NVIDIA's index, "
    "https://pypi.nvidia.com) and a CUDA GPU. On a machine without them, evaluate or run the .onnx model "
    "instead (ONNX Runtime, FP32 or INT8).")


def require_tensorrt():
    """Import tensorrt and check for a GPU, or stop with a clear message."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError(f"tensorrt is not installed. {TENSORRT_HINT}") from e
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA GPU is available. {TENSORRT_HINT}")
    return trt


class TensorRTBackend(ModelBackend):
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (``execute_async_v3``)."""

    def __init__(self, path: str | Path) -> None:
        trt = require_tensorrt()
        import torch

        path = Path(path)
        meta = read_metadata(path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize the engine (built with another "
                               "TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        super().__init__(path, tuple(meta["input_hw"]), list(meta["class_names"]), int(meta.get("stride", 16)),
                         dict(meta.get("postprocess") or {}), "tensorrt", meta.get("data"))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.cuda.stream(self.stream):  # the copy, the outputs and the engine share one stream
            x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).cuda(non_blocking=True)
            self.context.set_input_shape(ONNX_INPUT, tuple(x.shape))
            self.context.set_tensor_address(ONNX_INPUT, x.data_ptr())
            outs = {}
            for name in ONNX_OUTPUTS:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
        self.stream.synchronize()
        return outs[ONNX_OUTPUTS[0]].cpu().numpy(), outs[ONNX_OUTPUTS[1]].cpu().numpy()
