"""A stand-in for the ``tensorrt`` and cuda-python runtime modules, so that ``TensorRTBackend``'s buffer and
copy logic runs on a machine without a GPU. Device memory is host bytes; the "engine" returns slices of its
input as the two GridBox maps, so a test can check that what comes back is what went in, batch by batch."""

from __future__ import annotations

import ctypes
import enum
import sys
import types

import numpy as np


class CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class CopyKind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeCudaRuntime(types.ModuleType):
    cudaError_t = CudaError
    cudaMemcpyKind = CopyKind

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.memory: dict[int, bytearray] = {}
        self.next_ptr = 0x1000

    def cudaGetDeviceCount(self):  # noqa: N802 - the CUDA runtime's names
        return CudaError.cudaSuccess, 1

    def cudaStreamCreate(self):  # noqa: N802
        return CudaError.cudaSuccess, "stream"

    def cudaStreamSynchronize(self, stream):  # noqa: N802, ANN001
        return (CudaError.cudaSuccess,)

    def cudaMalloc(self, nbytes: int):  # noqa: N802
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 0x1000
        self.memory[ptr] = bytearray(nbytes)
        return CudaError.cudaSuccess, ptr

    def cudaFree(self, ptr: int):  # noqa: N802
        del self.memory[ptr]
        return (CudaError.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: CopyKind, stream):  # noqa: N802, ANN001
        if kind is CopyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:nbytes]), nbytes)
        return (CudaError.cudaSuccess,)


class FakeContext:
    def __init__(self, cudart: FakeCudaRuntime) -> None:
        self.cudart, self.shapes, self.addresses = cudart, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        b, _, h, w = self.shapes["input_1"]
        return (b, 1 if name == "output_cov/Sigmoid" else 4, h // 16, w // 16)

    def execute_async_v3(self, stream) -> bool:  # noqa: ANN001
        shape = self.shapes["input_1"]
        x = np.frombuffer(bytes(self.cudart.memory[self.addresses["input_1"]][: int(np.prod(shape)) * 4]),
                          np.float32).reshape(shape)
        outputs = {"output_cov/Sigmoid": x[:, :1, ::16, ::16], "output_bbox/BiasAdd": x[:, [0, 1, 2, 0], ::16, ::16]}
        for name, value in outputs.items():
            data = np.ascontiguousarray(value, np.float32).tobytes()
            self.cudart.memory[self.addresses[name]][: len(data)] = data
        return True


def install() -> FakeCudaRuntime:
    """Put fake ``tensorrt`` and ``cuda.bindings.runtime`` modules in ``sys.modules``; returns the runtime."""
    cudart = FakeCudaRuntime()

    class Engine:
        def create_execution_context(self) -> FakeContext:
            return FakeContext(cudart)

    class Runtime:
        def __init__(self, logger) -> None:  # noqa: ANN001
            pass

        def deserialize_cuda_engine(self, data: bytes):  # noqa: ANN201
            return Engine() if data.startswith(b"fake engine") else None

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = Runtime
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    sys.modules.update({"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart})
    return cudart
