"""TensorRT engine backend (TensorRT 10 and 11 runtime API). Needs the tensorrt package, NVIDIA's cuda-python
(CUDA runtime calls: device buffers, copies, a stream) and a CUDA GPU; not torch, so an engine deploys on a box
that has neither torch nor Lightning."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from gridface.contract import ONNX_INPUT, ONNX_OUTPUTS, read_metadata
from gridface.inference.base import ModelBackend, run_in_batches
from gridface.utils.errors import MissingDependency

TENSORRT_HINT = (
    "TensorRT engines need NVIDIA TensorRT 10 or 11 and cuda-python (pip install tensorrt cuda-python; TensorRT "
    "from NVIDIA's index, https://pypi.nvidia.com) and a CUDA GPU. On a machine without them, evaluate or run the "
    ".onnx model instead (ONNX Runtime, FP32 or INT8).")


def cuda_runtime() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise MissingDependency(f"cuda-python is not installed. {TENSORRT_HINT}") from e
    return cudart


def cuda_check(cudart: Any, result: tuple) -> Any:
    """cuda-python calls return ``(error, *values)``: raise on an error, return the value(s)."""
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA runtime error: {err}")
    return values[0] if len(values) == 1 else values


def require_tensorrt() -> Any:
    """Import tensorrt and check for cuda-python and a GPU, or stop with a clear message."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependency(f"tensorrt is not installed. {TENSORRT_HINT}") from e
    cudart = cuda_runtime()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        raise MissingDependency(f"no CUDA GPU is available ({err}). {TENSORRT_HINT}")
    return trt


class DeviceBuffer:
    """One float32 GPU allocation, grown on demand, with host copies on a stream."""

    def __init__(self, cudart: Any) -> None:
        self.cudart, self.ptr, self.nbytes = cudart, 0, 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr, self.nbytes = int(cuda_check(self.cudart, self.cudart.cudaMalloc(nbytes))), nbytes
        return self.ptr

    def upload(self, host: np.ndarray, stream: Any) -> int:
        self.reserve(host.nbytes)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self.cudart, self.cudart.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream))
        return self.ptr

    def download(self, host: np.ndarray, stream: Any) -> np.ndarray:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self.cudart, self.cudart.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream))
        return host

    def free(self) -> None:
        if self.ptr:
            cuda_check(self.cudart, self.cudart.cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


class TensorRTBackend(ModelBackend):
    """Runs a serialized engine (``execute_async_v3``): the input copied in, the two maps copied out, on one
    stream, into buffers kept between calls."""

    def __init__(self, path: str | Path) -> None:
        trt = require_tensorrt()
        self.cudart = cuda_runtime()
        path = Path(path)
        meta = read_metadata(path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize the engine (built with another "
                               "TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        # the largest batch the engine takes: its input's fixed N, or its optimization profile's max (gridface
        # builds 1/8/32, export.batch); a larger batch (evaluate batch_size=64) runs in batches of that size
        first = int(tuple(self.engine.get_tensor_shape(ONNX_INPUT))[0])
        self.fixed_batch = first if first > 0 else None
        self.max_batch = first if first > 0 else int(
            tuple(self.engine.get_tensor_profile_shape(ONNX_INPUT, 0)[2])[0])
        self.stream = cuda_check(self.cudart, self.cudart.cudaStreamCreate())
        self.buffers = {name: DeviceBuffer(self.cudart) for name in (ONNX_INPUT, *ONNX_OUTPUTS)}
        super().__init__(path, tuple(meta["input_hw"]), list(meta["class_names"]), int(meta["stride"]),
                         dict(meta.get("postprocess") or {}), "tensorrt", meta.get("data"))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return run_in_batches(np.ascontiguousarray(images, np.float32), self._run, self.max_batch,
                              pad=self.fixed_batch is not None)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.context.set_input_shape(ONNX_INPUT, tuple(x.shape)):
            raise RuntimeError(f"{self.path}: TensorRT refused the input shape {tuple(x.shape)} (the engine takes "
                               f"batches of at most {self.max_batch} at {self.input_hw[0]}x{self.input_hw[1]})")
        self.context.set_tensor_address(ONNX_INPUT, self.buffers[ONNX_INPUT].upload(x, self.stream))
        outs = {}
        for name in ONNX_OUTPUTS:
            outs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), np.float32)
            self.context.set_tensor_address(name, self.buffers[name].reserve(outs[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for name in ONNX_OUTPUTS:
            self.buffers[name].download(outs[name], self.stream)
        cuda_check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream))
        return outs[ONNX_OUTPUTS[0]], outs[ONNX_OUTPUTS[1]]

    def __del__(self) -> None:
        for buffer in getattr(self, "buffers", {}).values():
            with contextlib.suppress(Exception):  # at interpreter shutdown the driver frees it anyway
                buffer.free()
