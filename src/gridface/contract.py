"""What an exported model is, in one place: the tensor names (DeepStream's, as TAO's DetectNet_v2 exports them) and
the metadata written with every ONNX model (in its own ``metadata_props``, key ``gridface``) and beside every model
and TensorRT engine (``<file name>.json``). Export writes this contract; inference, evaluation and the TensorRT code
read it. Imports neither torch nor onnxruntime at module level."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gridface.version import __version__

ONNX_INPUT = "input_1"
ONNX_OUTPUTS = ("output_cov/Sigmoid", "output_bbox/BiasAdd")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
METADATA_KEY = "gridface"  # the ONNX metadata_props key holding the contract as JSON
METADATA_REQUIRED = ("format", "input_name", "output_names", "input_hw", "class_names", "stride")


def metadata_path(model_path: str | Path) -> Path:
    """The sidecar JSON, named after the whole file name (``m_int8.onnx.json``, ``m_int8.engine.json``): an ONNX
    model and the engine built from it never share one."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def legacy_metadata_path(model_path: str | Path) -> Path:
    """Where earlier gridface versions wrote the sidecar (``m_int8.json`` for ``m_int8.onnx`` and ``m_int8.engine``
    alike, so the later export overwrote the other's record)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".json")


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


def fixed_batch(shape: Any) -> int | None:
    """The batch size an input shape fixes (a static export, e.g. batch 1 for a TensorRT or DLA build), or None
    when its first dimension is symbolic: a fixed-batch model is run in batches of that size."""
    first = list(shape)[0] if len(list(shape)) else None
    return first if isinstance(first, int) and first > 0 else None


def check_onnx_contract(path: Path, session: Any, input_hw: tuple[int, int]) -> None:
    """The model must take ``ONNX_INPUT`` [N, 3, H, W] at its metadata's input size and give ``ONNX_OUTPUTS``;
    anything else is an error saying what was expected and what the file has. N may be fixed
    (:func:`fixed_batch`)."""
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


def _load_json(meta_file: Path) -> dict[str, Any]:
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}:{e.lineno}: invalid JSON ({e.msg})") from None


def _is_engine(path: Path) -> bool:
    return path.suffix.lower() in ENGINE_SUFFIXES


@contextmanager
def unreadable_onnx(path: Path) -> Iterator[None]:
    """What onnx or ONNX Runtime raise on a file that is not a whole ONNX model (protobuf decode errors, ORT's
    INVALID_PROTOBUF) as one ``ValueError`` naming the file."""
    try:
        yield
    except (ImportError, MemoryError):
        raise
    except Exception as e:
        text = str(e).strip() or type(e).__name__
        if type(e).__name__ == "DecodeError" or "INVALID_PROTOBUF" in text or "Protobuf parsing failed" in text:
            raise ValueError(f"{path}: not a readable ONNX model ({text.splitlines()[-1]}); a damaged or partly "
                             "copied file? Copy or export it again") from None
        # a whole file this onnx / ONNX Runtime cannot load (e.g. an IR version newer than it reads): their words
        raise ValueError(f"{path}: cannot be loaded here: {text}") from e


def embedded_metadata(model_path: str | Path) -> dict[str, Any] | None:
    """The contract an ONNX model carries in its ``metadata_props`` (None when it has none). Read with ``onnx`` when
    installed, else with ONNX Runtime (a deployment box may have only onnxruntime)."""
    path = Path(model_path)
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        with unreadable_onnx(path):
            props = dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                         .get_modelmeta().custom_metadata_map)
    else:
        with unreadable_onnx(path):
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        return None
    try:
        return json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata_props '{METADATA_KEY}' is not valid JSON ({e.msg})") from None


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The model's contract: its sidecar ``<file name>.json``; else (files from earlier versions) ``<stem>.json``
    when it describes this kind of file (an engine's record is not an ONNX model's); else, for an ONNX model, the
    contract in its own ``metadata_props``."""
    path = Path(model_path)
    meta, source = None, metadata_path(path)
    if source.is_file():
        meta = _load_json(source)
    elif legacy_metadata_path(path).is_file():
        legacy = _load_json(legacy_metadata_path(path))
        if (legacy.get("format") == "tensorrt") == _is_engine(path):
            meta, source = legacy, legacy_metadata_path(path)
    if meta is None and path.suffix.lower() == ".onnx" and path.is_file():
        meta, source = embedded_metadata(path), path
    if meta is None:
        raise FileNotFoundError(
            f"{path}: not a model gridface.export wrote, or one parted from its record: it carries no gridface "
            f"metadata and {metadata_path(path).name} is not beside it (gridface.export writes both: input size, "
            "class names, post-processing); export the model with gridface.export, or keep the .json with it")
    missing = [k for k in METADATA_REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{source}: lacks {missing}; re-export the model with gridface.export")
    return meta
