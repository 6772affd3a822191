"""What an exported model is, in one place: the tensor names (DeepStream's, as TAO's DetectNet_v2 exports them) and
the metadata JSON written beside every ONNX model and TensorRT engine. Export writes this contract; inference,
evaluation and the TensorRT code read it. Imports neither torch nor onnxruntime."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from gridface.version import __version__

ONNX_INPUT = "input_1"
ONNX_OUTPUTS = ("output_cov/Sigmoid", "output_bbox/BiasAdd")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def metadata_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".json")

METADATA_REQUIRED = ("format", "input_name", "output_names", "input_hw", "class_names", "stride")


def deployment_metadata(fmt: str, input_hw: tuple[int, int] | list[int], class_names: list[str], stride: int,
                        postprocess: dict[str, Any], source_checkpoint: str | Path, data: dict[str, Any] | None,
                        versions: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The metadata of one deployed model: I/O contract, preprocessing, post-processing, training data, versions."""
    return {"format": fmt, "input_name": ONNX_INPUT, "output_names": list(ONNX_OUTPUTS),
            "input_hw": list(input_hw), "input_scale": 1 / 255, "color": "RGB", "letterbox": "centred",
            "class_names": list(class_names), "stride": int(stride), "postprocess": dict(postprocess or {}),
            "source_checkpoint": str(source_checkpoint), "data": data,
            "versions": {"gridface": __version__, "python": platform.python_version(), **versions},
            **extra}


def check_onnx_contract(path: Path, session: Any, input_hw: tuple[int, int]) -> None:
    """The model must take ``ONNX_INPUT`` [N, 3, H, W] at its metadata's input size and give ``ONNX_OUTPUTS``;
    anything else is an error saying what was expected and what the file has."""
    expected = f"expected input '{ONNX_INPUT}' [N, 3, {input_hw[0]}, {input_hw[1]}] and outputs {list(ONNX_OUTPUTS)}"
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != ONNX_INPUT:
        raise ValueError(f"{path}: inputs {[i.name for i in inputs]}: {expected}; export with gridface.export")
    shape = list(inputs[0].shape)
    fixed = [d if isinstance(d, int) else None for d in shape]
    if len(shape) != 4 or fixed[1] not in (3, None) or any(
            f is not None and f != want for f, want in zip(fixed[2:], input_hw, strict=True)):
        raise ValueError(f"{path}: input '{ONNX_INPUT}' has shape {shape}: {expected} (the size in "
                         f"{metadata_path(path).name})")
    names = [o.name for o in session.get_outputs()]
    missing = [n for n in ONNX_OUTPUTS if n not in names]
    if missing:
        raise ValueError(f"{path}: outputs {names} lack {missing}: {expected}; export with gridface.export")


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    meta_file = metadata_path(model_path)
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{meta_file} not found: gridface.export writes it beside every exported model (input size, "
            "class names, post-processing); keep the two together")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}:{e.lineno}: invalid JSON ({e.msg})") from None
    missing = [k for k in METADATA_REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{meta_file}: lacks {missing}; re-export the model with gridface.export")
    return meta
