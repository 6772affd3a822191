"""Running a trained model: backends for every format (checkpoint, ONNX, TensorRT) behind one interface."""

from gridface.inference.backends import ModelBackend, load_backend

__all__ = ["ModelBackend", "load_backend"]
