"""Static INT8 quantization (explicit QDQ nodes) with ONNX Runtime, calibrated on training images.

The coverage head's sigmoid stays in float: quantizing a [0, 1] probability to 8 bits costs AP at the
low coverage thresholds clustering uses (0.004). Two schemes, one per runtime (:func:`scheme`):

- ``uint8`` activations (asymmetric, int32 biases): ONNX Runtime on CPUs, ``<model>_int8.onnx``.
- ``int8`` activations, symmetric (zero-points 0), per-channel int8 weights, biases left float: TensorRT's
  explicit quantization (its ONNX parser refuses uint8 Q/DQ and non-zero zero-points, and its DequantizeLinear
  takes no int32 input), ``<model>_int8_trt.onnx``. ONNX Runtime runs it too, so its accuracy is measured on CPUs.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from gridface.contract import ONNX_INPUT
from gridface.data.dataset import iter_network_inputs
from gridface.utils.io import atomic_path

log = logging.getLogger(__name__)
METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")


def scheme(activation_type: str) -> dict[str, object]:
    """What an INT8 model's metadata says about its quantization, and which runtime it is for."""
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"export.activation_type must be one of {ACTIVATION_TYPES}, got '{activation_type}'")
    tensorrt = activation_type == "int8"
    return {"target": "tensorrt" if tensorrt else "onnxruntime", "activations": activation_type,
            "symmetric_activations": tensorrt, "weights": "int8 symmetric",
            "bias": "float" if tensorrt else "int32", "format": "QDQ"}


def int8_model_path(fp32_path: str | Path, activation_type: str) -> Path:
    """``<model>_int8_trt.onnx`` for TensorRT's symmetric scheme, ``<model>_int8.onnx`` for ONNX Runtime's."""
    p = Path(fp32_path)
    suffix = "_int8_trt" if scheme(activation_type)["target"] == "tensorrt" else "_int8"
    return p.with_name(f"{p.stem}{suffix}.onnx")


def calibration_batches(image_paths: Sequence[str | Path], input_hw: tuple[int, int], batch_size: int = 8,
                        exact: bool = False) -> Iterator[np.ndarray]:
    """Letterboxed [0, 1] batches, exactly as training and inference preprocess; unreadable files are
    reported and skipped. ``exact`` (a model with a fixed batch size): the last batch is filled up with its own
    images again."""
    batch: list[np.ndarray] = []
    for x in iter_network_inputs(image_paths, input_hw, desc="calibration"):
        batch.append(x)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch if not exact else [batch[i % len(batch)] for i in range(batch_size)])


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over our batches; counts the images it handed over."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._it = iter(batches)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        if b is not None:
            self.images += len(b)
        return None if b is None else {ONNX_INPUT: b}

    def rewind(self) -> None:  # one pass is all static calibration needs
        pass


def float_nodes(model_path: str | Path, keep_head_float: bool = True, keep_stem_float: bool = True) -> list[str]:
    """Nodes left in float: the coverage sigmoid; by default the two 1x1 head convolutions (the bbox
    output is multiplied by 35 when decoded, so int8 steps there become pixel errors; the head is a
    tiny share of the compute); optionally the stem convolution (the first Conv), the layer whose
    quantization costs the most accuracy on pruned models (measured: README)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "Sigmoid"]
    if keep_head_float:
        sig_inputs = {i for n in graph.node if n.op_type == "Sigmoid" for i in n.input}
        outputs = {o.name for o in graph.output}
        keep += [n.name for n in graph.node if n.op_type == "Conv" and (set(n.output) & (sig_inputs | outputs))]
    if keep_stem_float:
        keep += [next(n.name for n in graph.node if n.op_type == "Conv")]
    return keep


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, image_paths: Sequence[str | Path],
                  input_hw: tuple[int, int], method: str = "minmax", per_channel: bool = True,
                  batch_size: int = 8, activation_type: str = "uint8", keep_head_float: bool = True,
                  keep_stem_float: bool = True, extra_float_nodes: Sequence[str] = (),
                  stats: dict[str, int] | None = None) -> Path:
    """Write a QDQ INT8 model; ``extra_float_nodes`` names more ONNX nodes to leave in float
    (``scripts/int8_sensitivity.py`` shows which layers cost accuracy). ``activation_type`` uint8
    (asymmetric: ONNX Runtime on CPUs) or int8 (TensorRT's scheme: symmetric, biases float; see the module).
    ``stats``, when given, receives ``images``: how many images calibrated (unreadable files are skipped) and
    ``skipped``; no readable image at all is an error."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"export.calibration.method must be one of {METHODS}, got '{method}'")
    tensorrt = scheme(activation_type)["target"] == "tensorrt"
    if not image_paths:
        raise ValueError("INT8 calibration needs images: none were found in the calibration set")
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as work, atomic_path(int8_path) as tmp:
        pre = Path(work) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        keep = float_nodes(pre, keep_head_float, keep_stem_float)
        import onnx

        graph = onnx.load(str(pre), load_external_data=False).graph
        if extra_float_nodes:
            names = {n.name for n in graph.node}
            unknown = [n for n in extra_float_nodes if n not in names]
            if unknown:
                raise ValueError(f"export.calibration.float_nodes: {unknown} are not nodes of {fp32_path}")
            keep += list(extra_float_nodes)
        fixed = graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0: a symbolic batch dimension
        batches = calibration_batches(image_paths, input_hw, fixed or batch_size, exact=bool(fixed))
        first = next(batches, None)  # ONNX Runtime's own error for no data ("No data is collected") names nothing
        if first is None:
            raise ValueError(f"INT8 calibration: none of the {len(image_paths)} calibration images could be read "
                             "(each is named in a warning above)")
        reader = _Reader(itertools.chain([first], batches))
        quantize_static(
            str(pre), str(tmp), reader,
            quant_format=QuantFormat.QDQ, per_channel=per_channel, calibrate_method=calib,
            activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=keep,
            extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
                           # TensorRT dequantizes no int32: its biases stay float (ORT's default quantizes them)
                           "QuantizeBias": not tensorrt},
        )
    if stats is not None:
        stats.update(images=reader.images, skipped=len(image_paths) - reader.images)
    return int8_path
