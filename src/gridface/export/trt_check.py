"""TensorRT's explicit-quantization and parser rules, checked on an ONNX model without TensorRT, so a model bound for a
TensorRT engine (or DeepStream) is refused here, with the node and the rule named, not on the GPU machine.

Rules (each has a name the error quotes):

- ``opset``: the default-domain opset is 13 or later (per-channel QuantizeLinear/DequantizeLinear need 13).
- ``operator``: every node is an ONNX-domain operator TensorRT's ONNX parser supports (:data:`SUPPORTED_OPS`).
- ``io-names``: the input is ``input_1`` and the outputs are DeepStream's DetectNet_v2 names (:mod:`gridface.contract`).
- ``int8``: Q/DQ are int8: no uint8 (TensorRT's parser refuses UINT8 QuantizeLinear, onnx/onnx-tensorrt#884), no
  int32 DequantizeLinear (a quantized bias: TensorRT dequantizes int8, not int32).
- ``zero-point``: zero-points all 0 ("TRT only supports symmetric quantization", NVIDIA/TensorRT#2774).
- ``scale``: scales are constants, finite and > 0.
- ``axis``: a per-channel scale runs along the output channels of a convolution weight (axis 0, one scale per
  output channel); activations are quantized per tensor.
- ``qdq-pair``: every QuantizeLinear feeds only DequantizeLinear nodes, every DequantizeLinear reads a QuantizeLinear
  or a constant (a QAT export quantizes a float weight with its own QuantizeLinear: its scales are the weight's),
  and a convolution with quantized weights reads a quantized input: the Q/DQ pattern TensorRT fuses
  into an int8 convolution.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gridface.contract import ONNX_INPUT, ONNX_OUTPUTS

MIN_OPSET = 13
# ONNX operators marked supported ("Y") in onnx/onnx-tensorrt docs/operators.md, "Operator Support Matrix", at its
# TensorRT 8.5 revision (opset 17, the export's; TensorRT 10 and 11 parse all of these and more). Kept as a
# conservative allow-list: an operator outside it is refused, though a newer parser may take it. (The TensorRT 8.4
# list read before lacked HardSwish, and every TensorRT export of network.backbone=mobilenet_v3_large was refused.)
SUPPORTED_OPS = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum",
    "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GRU", "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization",
    "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign",
    "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid",
    "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze",
    "Upsample", "Where", "Xor",
))
QDQ = ("QuantizeLinear", "DequantizeLinear")


class TensorRTCheckError(ValueError):
    """A model TensorRT would refuse (or mis-build); the message names the node and the rule."""


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def tensorrt_problems(model: Any) -> list[str]:
    """Every broken rule, one line each (``node 'name' (Op): rule 'rule': what is wrong``); empty when TensorRT's
    explicit quantization takes the model."""
    graph = model.graph
    problems: list[str] = []

    def bad(node: Any, rule: str, what: str) -> None:
        problems.append(f"node '{node.name or node.output[0]}' ({node.op_type}): rule '{rule}': {what}")

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"model: rule 'opset': opset {opset}, TensorRT's explicit quantization needs >= {MIN_OPSET}")
    consts = _constants(graph)
    inputs = [i.name for i in graph.input if i.name not in consts]
    outputs = [o.name for o in graph.output]
    if inputs != [ONNX_INPUT] or sorted(outputs) != sorted(ONNX_OUTPUTS):
        problems.append(f"model: rule 'io-names': inputs {inputs}, outputs {outputs}; DeepStream's contract is "
                        f"input '{ONNX_INPUT}', outputs {list(ONNX_OUTPUTS)}")
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            bad(node, "operator", f"{node.domain + '.' if node.domain else ''}{node.op_type} is not an operator "
                                  "TensorRT's ONNX parser supports (onnx-tensorrt docs/operators.md)")
        if node.op_type in QDQ:
            _check_qdq(node, consts, producer, consumers, bad)
        if node.op_type == "Conv":
            weight_q = _from_dq(node.input[1], producer)
            input_q = _from_dq(node.input[0], producer)
            if weight_q and not input_q:  # (a dequantized input into a float convolution is fine: it runs float)
                bad(node, "qdq-pair", "its weight is int8 but its input is float; TensorRT's int8 convolution reads "
                                      "a DequantizeLinear on both input and weight")
    return problems


def _from_dq(name: str, producer: dict[str, Any]) -> bool:
    node = producer.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def _check_qdq(node: Any, consts: dict[str, np.ndarray], producer: dict[str, Any], consumers: dict[str, list[Any]],
               bad: Any) -> None:
    quantize = node.op_type == "QuantizeLinear"
    scale = consts.get(node.input[1])
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None:
        bad(node, "scale", f"scale '{node.input[1]}' is not a constant")
    elif not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        bad(node, "scale", f"scales must be finite and > 0, got min {float(np.min(scale)):g}")
    data = consts.get(node.input[0])
    src = producer.get(node.input[0])
    if data is None and not quantize and src is not None and src.op_type == "QuantizeLinear":
        # the weight layout of a QAT export (Model Optimizer, pytorch-quantization): float weight -> Q -> DQ, which
        # TensorRT folds to an int8 weight; its DQ scale is per weight channel, not per activation
        data = consts.get(src.input[0])
        weight_q = data is not None
    else:
        weight_q = False
    if zero is not None:
        dtype = zero.dtype
    elif quantize:
        dtype = np.dtype(np.uint8)  # QuantizeLinear without a zero-point outputs uint8 (the ONNX default)
    else:
        dtype = data.dtype if data is not None and not weight_q else None
    if dtype is not None and dtype != np.int8:
        what = "a quantized bias (int32)" if dtype == np.int32 else f"{dtype} Q/DQ (asymmetric ONNX Runtime scheme?)"
        bad(node, "int8", f"{what}; TensorRT's explicit quantization takes int8 Q/DQ only")
    if zero is not None and np.any(zero != 0):
        bad(node, "zero-point", f"zero-point {zero.ravel()[:4].tolist()}...; TensorRT takes symmetric quantization "
                                "only (zero-points all 0)")
    if scale is not None and scale.size > 1:
        axis = _axis(node)
        convs = [c for c in consumers.get(node.output[0], []) if c.op_type == "Conv" and c.input[1] == node.output[0]]
        if data is None:
            bad(node, "axis", f"per-channel scale ({scale.size}) on an activation; TensorRT quantizes activations "
                              "per tensor")
        elif convs and (axis % data.ndim != 0 or scale.size != data.shape[0]):
            bad(node, "axis", f"per-channel axis {axis} with {scale.size} scales on a convolution weight of shape "
                              f"{list(data.shape)}; the axis must be 0 (output channels)")
        elif scale.size != data.shape[axis % data.ndim]:
            bad(node, "axis", f"{scale.size} scales along axis {axis} of a tensor of shape {list(data.shape)}")
    if quantize:
        others = [c for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
        if others:
            bad(node, "qdq-pair", f"its output feeds {others[0].op_type} '{others[0].name}', not a DequantizeLinear")
    elif data is None and (src is None or src.op_type != "QuantizeLinear"):
        bad(node, "qdq-pair", f"its input '{node.input[0]}' comes from "
                              f"{src.op_type if src is not None else 'the graph input'}, not a QuantizeLinear")


def check_tensorrt_onnx(path: str | Path) -> dict[str, int]:
    """Refuse ``path`` (:class:`TensorRTCheckError`, one line: the file, the node, the rule) unless TensorRT's
    parser and explicit quantization take it; returns what was checked (node and Q/DQ counts)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    problems = tensorrt_problems(model)
    if problems:
        rules = Counter(p.split("rule '")[1].split("'")[0] for p in problems)
        more = f" ({len(problems)} problems: {', '.join(f'{r} x{n}' for r, n in rules.items())})" \
            if len(problems) > 1 else ""
        raise TensorRTCheckError(f"{path}: not a model TensorRT takes: {problems[0]}{more}")
    ops = [n.op_type for n in model.graph.node]
    return {"nodes": len(ops), "quantize": ops.count("QuantizeLinear"), "dequantize": ops.count("DequantizeLinear")}
