"""Build TensorRT engines from the exported ONNX, for TensorRT 10 and 11 (chosen by the installed version).

- Every model is first checked against TensorRT's parser and explicit-quantization rules
  (:func:`gridface.export.trt_check.check_tensorrt_onnx`): a model TensorRT would refuse stops here, rule named.
- INT8 from the symmetric QDQ ONNX is explicit quantization in a strongly typed network, on TensorRT 10 and 11
  alike (TensorRT's docs: "Use explicit quantization with Strong Typing. Precision-control build flags are not
  required and should not be specified"): no INT8 flag, no calibrator; the float-kept layers run in FP32.
- TensorRT 10, FP16: the FP16 builder flag; INT8 from a plain FP32 ONNX (not what gridface.export gives it):
  an entropy calibrator over training images with a cache file.
- TensorRT 11 removed the FP16/INT8 builder flags and the implicit calibrators: networks are strongly
  typed, so precision comes from the ONNX itself (an FP16 ONNX for FP16, the QDQ ONNX for INT8).

Every engine gets an optimisation profile for the batch axis, a persistent timing cache, and metadata
(TensorRT version, GPU, input size, precision) in a JSON beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridface.contract import ONNX_INPUT
from gridface.export.trt_check import check_tensorrt_onnx
from gridface.inference.tensorrt_backend import DeviceBuffer, cuda_check, cuda_runtime, require_tensorrt
from gridface.utils.io import atomic_path

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_name(cudart: Any, device: int = 0) -> str:
    name = cuda_check(cudart, cudart.cudaGetDeviceProperties(device)).name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def is_qdq(onnx_path: str | Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def make_entropy_calibrator(trt: Any, batches: Sequence[np.ndarray], cache_file: Path):
    """TensorRT 10's IInt8EntropyCalibrator2 over letterboxed batches (a cuda-python device buffer)."""
    cudart = cuda_runtime()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = list(batches)
            self._i = 0
            self._device = DeviceBuffer(cudart)
            self._stream = cuda_check(cudart, cudart.cudaStreamCreate())

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0]) if self._batches else 1

        def get_batch(self, names):  # noqa: ANN001 - TensorRT's signature
            if self._i >= len(self._batches):
                return None
            ptr = self._device.upload(np.ascontiguousarray(self._batches[self._i], np.float32), self._stream)
            cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream))
            self._i += 1
            return [ptr]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache) -> None:  # noqa: ANN001
            with atomic_path(cache_file) as tmp:
                tmp.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, input_hw: tuple[int, int], precision: str = "fp16",
                 batch: tuple[int, int, int] = (1, 8, 32), workspace_gb: float = 4.0,
                 timing_cache: str | Path | None = None, calibration_batches: Sequence[np.ndarray] | None = None,
                 calibration_cache: str | Path | None = None) -> dict[str, Any]:
    """Build and serialize an engine; returns metadata to store beside it. Stops with a clear message
    without TensorRT or a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"export.precision must be one of {PRECISIONS}, got '{precision}'")
    checked = check_tensorrt_onnx(onnx_path)  # before TensorRT: a refused model fails the same way everywhere
    qdq = is_qdq(onnx_path)
    if qdq and precision != "int8":
        raise ValueError(f"{onnx_path} is an INT8 QDQ model: build it with export.precision=int8")
    trt = require_tensorrt()
    cudart = cuda_runtime()

    major = tensorrt_major(trt)
    strongly_typed = major >= 11 or qdq
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    h, w = input_hw
    profile.set_shape(ONNX_INPUT, (batch[0], 3, h, w), (batch[1], 3, h, w), (batch[2], 3, h, w))
    config.add_optimization_profile(profile)

    if strongly_typed:
        # Strongly typed: the ONNX carries the precision. Check the caller gave the matching model.
        if precision == "int8" and not qdq:
            raise ValueError("TensorRT 11 builds INT8 only from a QDQ ONNX: export with export=tensorrt_int8")
    else:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT keeps out of int8 may use fp16
            if not qdq:
                if not calibration_batches:
                    raise ValueError("INT8 from a non-QDQ ONNX needs calibration images")
                cache = Path(calibration_cache or Path(engine_path).with_suffix(".calib"))
                config.int8_calibrator = make_entropy_calibrator(trt, calibration_batches, cache)
                config.set_calibration_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": str(trt.__version__), "gpu": gpu_name(cudart),
            "precision": precision, "explicit_quantization": qdq, "strongly_typed": strongly_typed,
            "tensorrt_check": checked,
            "batch_profile": {"min": batch[0], "opt": batch[1], "max": batch[2]}}


def convert_fp16(onnx_path: str | Path, out_path: str | Path) -> Path:
    """An FP16 copy of the ONNX (float I/O kept) for TensorRT 11's strongly typed FP16 engines."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as e:
        raise ImportError("FP16 ONNX for TensorRT 11 needs onnxconverter-common: "
                          "pip install onnxconverter-common") from e
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(out_path)
