"""TensorRT's explicit-quantization rules checked without TensorRT (gridface.export.trt_check): ONNX Runtime's uint8
model refused with the rule named, the symmetric TensorRT-bound model passed, and each rule refusing a model
corrupted by hand to break it."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from gridface.contract import ONNX_OUTPUTS
from gridface.data.sources import synthetic
from gridface.export.onnx_export import export_onnx
from gridface.export.quantize import int8_model_path, quantize_int8
from gridface.export.trt_check import TensorRTCheckError, check_tensorrt_onnx, tensorrt_problems
from gridface.model import GridBoxNet

HW = (64, 96)


@pytest.fixture(scope="module")
def models(module_tmp):
    tmp = module_tmp("trt")
    torch.manual_seed(0)
    net = GridBoxNet().eval()
    images = [s.image for s in synthetic(str(tmp / "img"), num_images=4, seed=1, width=HW[1], height=HW[0])]
    fp32 = export_onnx(net, tmp / "m.onnx", HW)
    ort = quantize_int8(fp32, int8_model_path(fp32, "uint8"), images, HW, activation_type="uint8", batch_size=4)
    trt = quantize_int8(fp32, int8_model_path(fp32, "int8"), images, HW, activation_type="int8", batch_size=4)
    return {"fp32": fp32, "ort": ort, "trt": trt}


def test_names_say_which_runtime(models):
    assert models["ort"].name == "m_int8.onnx" and models["trt"].name == "m_int8_trt.onnx"


def test_refuses_onnx_runtime_uint8_model_and_passes_the_tensorrt_one(models):
    with pytest.raises(TensorRTCheckError, match=r"m_int8\.onnx: not a model TensorRT takes: node '.+' \(\w+\): "
                                                 r"rule 'int8'.*zero-point x\d+"):
        check_tensorrt_onnx(models["ort"])
    summary = check_tensorrt_onnx(models["trt"])
    assert summary["quantize"] > 10 and summary["dequantize"] > summary["quantize"]
    assert check_tensorrt_onnx(models["fp32"])["quantize"] == 0  # a float model passes the parser rules too


def test_tensorrt_model_is_symmetric_int8_with_float_biases(models):
    graph = onnx.load(str(models["trt"])).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [inits[n.input[2]] for n in qdq]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(c.input[2] in inits and inits[c.input[2]].dtype == np.float32 for c in convs)  # biases stay float
    producers = {o: n for n in graph.node for o in n.output}
    weight_dq = [producers[c.input[1]] for c in convs if c.input[1] in producers]
    assert weight_dq and all(inits[d.input[1]].size == inits[d.input[0]].shape[0] for d in weight_dq)  # per channel


def _first(model, op, pred=lambda n: True):
    return next(n for n in model.graph.node if n.op_type == op and pred(n))


def _init(model, name):
    return next(i for i in model.graph.initializer if i.name == name)


def _set(model, name, value):
    _init(model, name).CopyFrom(numpy_helper.from_array(value, name))


def negative_zero_point(m):
    q = _first(m, "QuantizeLinear")
    _set(m, q.input[2], np.array(-3, np.int8))


def uint8_zero_point(m):
    q = _first(m, "QuantizeLinear")
    _set(m, q.input[2], np.array(0, np.uint8))  # even a zero uint8 zero-point: the type is refused


def zero_scale(m):
    q = _first(m, "QuantizeLinear")
    _set(m, q.input[1], np.array(0.0, np.float32))


def weight_axis_1(m):
    inits = {i.name for i in m.graph.initializer}
    dq = _first(m, "DequantizeLinear", lambda n: n.input[0] in inits and numpy_helper.to_array(
        _init(m, n.input[1])).size > 1)
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 1


def unsupported_op(m):
    relu = _first(m, "Relu")
    relu.op_type, relu.domain = "Gelu", "com.microsoft"


def old_opset(m):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 12


def renamed_output(m):
    m.graph.output[0].name = "cov"
    for n in m.graph.node:
        n.output[:] = ["cov" if o == ONNX_OUTPUTS[0] else o for o in n.output]


def dq_without_q(m):
    """An activation's DequantizeLinear read straight from the float tensor before its QuantizeLinear."""
    q = _first(m, "QuantizeLinear")
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]:
            n.input[0] = q.input[0]


def q_into_conv(m):
    """A QuantizeLinear's int8 output fed to a convolution directly."""
    q = _first(m, "QuantizeLinear")
    dq = _first(m, "DequantizeLinear", lambda n: n.input[0] == q.output[0])
    conv = _first(m, "Conv", lambda n: n.input[0] == dq.output[0])
    conv.input[0] = q.output[0]


def int32_bias(m):
    """ONNX Runtime's default: the bias quantized to int32 behind a DequantizeLinear."""
    conv = _first(m, "Conv", lambda n: len(n.input) > 2)
    bias = numpy_helper.to_array(_init(m, conv.input[2]))
    m.graph.initializer.extend([numpy_helper.from_array(np.zeros_like(bias, np.int32), "b_q"),
                                numpy_helper.from_array(np.array(0.01, np.float32), "b_s"),
                                numpy_helper.from_array(np.array(0, np.int32), "b_z")])
    m.graph.node.extend([helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b_dq"], name="bias_dq")])
    conv.input[2] = "b_dq"


@pytest.mark.parametrize(("corrupt", "rule"), [
    (negative_zero_point, "zero-point"), (uint8_zero_point, "int8"), (zero_scale, "scale"), (weight_axis_1, "axis"),
    (unsupported_op, "operator"), (old_opset, "opset"), (renamed_output, "io-names"), (dq_without_q, "qdq-pair"),
    (q_into_conv, "qdq-pair"), (int32_bias, "int8")])
def test_each_rule_refuses_a_model_that_breaks_it(models, tmp_path, corrupt, rule):
    model = copy.deepcopy(onnx.load(str(models["trt"])))
    assert tensorrt_problems(model) == []
    corrupt(model)
    problems = tensorrt_problems(model)
    assert problems and all(f"rule '{rule}'" in p for p in problems), problems
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TensorRTCheckError, match=f"bad.onnx: not a model TensorRT takes: .*rule '{rule}'"):
        check_tensorrt_onnx(path)
