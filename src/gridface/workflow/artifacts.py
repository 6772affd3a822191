"""The artifacts a pipeline makes, one row each in its report: which stage writes it, under which output name, and
the backend it is deployed (and so measured) on."""

from __future__ import annotations

# artifact -> (stage that writes it, its output, backend it is measured on)
ARTIFACTS: dict[str, tuple[str, str, str]] = {
    "checkpoint": ("train", "checkpoint", "PyTorch eager FP32"),
    "pruned": ("prune", "checkpoint", "PyTorch eager FP32"),
    "retrained": ("retrain", "checkpoint", "PyTorch eager FP32"),
    "onnx_fp32": ("export_fp32", "model", "ONNX Runtime FP32"),
    "onnx_int8": ("export_int8", "model", "ONNX Runtime INT8"),
    "onnx_int8_trt": ("export_int8_trt", "model", "ONNX Runtime INT8 (TensorRT's symmetric QDQ)"),
    "engine_fp16": ("engine_fp16", "model", "TensorRT FP16"),
    "engine_int8": ("engine_int8", "model", "TensorRT INT8"),
}
