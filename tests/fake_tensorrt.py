"""A stand-in for the ``tensorrt`` and cuda-python runtime modules, so that ``TensorRTBackend``'s buffer and
copy logic, and ``tensorrt_build.build_engine``'s builder calls, run on a machine without a GPU. Device memory is
host bytes; the "engine" returns slices of its input as the two GridBox maps, so a test can check that what comes
back is what went in, batch by batch. The builder follows the TensorRT 10/11 Python API names
(``Builder.create_network``, ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, ``OnnxParser.parse``,
``IBuilderConfig.set_flag`` / ``int8_calibrator`` / ``set_memory_pool_limit`` / timing cache,
``build_serialized_network``) and records every build in ``tensorrt.builds`` for tests to read; TensorRT 11 (set
``version``) has no FP16/INT8 builder flags, as the real one."""

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

    def cudaGetDeviceProperties(self, device: int):  # noqa: N802
        return CudaError.cudaSuccess, types.SimpleNamespace(name=b"Fake GPU\x00")

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


PROFILE = ((1, 3), (8, 3), (32, 3))  # the engines' batch profile (min, opt, max), as gridface builds them


class FakeContext:
    def __init__(self, cudart: FakeCudaRuntime) -> None:
        self.cudart, self.shapes, self.addresses, self.batches = cudart, {}, {}, []

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        """TensorRT answers a shape outside the profile with False (and an error in its log), not an exception."""
        if not PROFILE[0][0] <= shape[0] <= PROFILE[2][0]:
            return False
        self.shapes[name] = tuple(shape)
        self.batches.append(shape[0])
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


def _builder_api(trt: types.ModuleType, major: int) -> None:
    """Builder, network, ONNX parser and builder config, recording what each build asked for."""
    trt.builds = []
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    flags = {"TF32": 7} if major >= 11 else {"FP16": 0, "INT8": 1, "TF32": 7}  # TensorRT 11 removed FP16/INT8
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)

    class Network:
        def __init__(self, flags: int) -> None:
            self.strongly_typed = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.onnx = None

    class OnnxParser:
        def __init__(self, network: Network, logger) -> None:  # noqa: ANN001
            self.network, self.errors = network, []

        def parse(self, data: bytes) -> bool:
            import onnx

            try:
                self.network.onnx = onnx.load_from_string(data)
            except Exception as e:  # noqa: BLE001 - the parser reports, it does not raise
                self.errors.append(str(e))
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"timing cache"

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.pools, self.int8_calibrator, self.cache = set(), [], {}, None, None

        def set_memory_pool_limit(self, pool, size: int) -> None:  # noqa: ANN001
            self.pools[pool] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag) -> None:  # noqa: ANN001
            self.flags.add(trt.BuilderFlag(flag).name)

        def set_calibration_profile(self, profile: Profile) -> None:
            self.calibration_profile = profile

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:  # noqa: ANN001
            pass

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            ops = [n.op_type for n in network.onnx.graph.node]
            trt.builds.append({"strongly_typed": network.strongly_typed, "flags": sorted(config.flags),
                               "calibrator": config.int8_calibrator is not None,
                               "profile": config.profiles[0].shapes, "qdq": "QuantizeLinear" in ops})
            return b"fake engine " + bytes(str(len(trt.builds)), "ascii")

    trt.Builder, trt.OnnxParser = Builder, OnnxParser


def install(version: str = "10.99") -> FakeCudaRuntime:
    """Put fake ``tensorrt`` and ``cuda.bindings.runtime`` modules in ``sys.modules``; returns the runtime."""
    cudart = FakeCudaRuntime()

    class Engine:
        def create_execution_context(self) -> FakeContext:
            self.context = FakeContext(cudart)
            return self.context

        def get_tensor_shape(self, name: str) -> tuple:
            return (-1, 3, -1, -1)

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
            return [(batch, channels, 0, 0) for batch, channels in PROFILE]

    class Runtime:
        def __init__(self, logger) -> None:  # noqa: ANN001
            pass

        def deserialize_cuda_engine(self, data: bytes):  # noqa: ANN201
            return Engine() if data.startswith(b"fake engine") else None

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = Runtime
    _builder_api(trt, int(version.split(".")[0]))
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    sys.modules.update({"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart})
    return cudart
