"""Export: ONNX (DeepStream names), INT8 QDQ via ONNX Runtime static quantization, TensorRT engines."""
