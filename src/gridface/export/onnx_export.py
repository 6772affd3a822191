"""Export a GridBox network to ONNX with the names DeepStream's DetectNet_v2 parser looks for, then check
it in ONNX Runtime against PyTorch.

Input ``input_1`` [N, 3, H, W] (dynamic N), outputs ``output_cov/Sigmoid`` [N, C, H/16, W/16] and
``output_bbox/BiasAdd`` [N, 4C, H/16, W/16]; one self-contained file (no external weights).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gridface.contract import METADATA_KEY, ONNX_INPUT, ONNX_OUTPUTS, metadata_path
from gridface.utils.io import atomic_path, write_json

log = logging.getLogger(__name__)
EXPORTERS = ("torchscript", "dynamo")


class ExportCheckError(ValueError):
    """An exported model that does not compute what its source computes (beyond the tolerance): not written."""


@contextmanager
def staged_model(path: str | Path) -> Iterator[Path]:
    """Write, check and describe a model under a staging name beside ``path`` (``.<stem>.staging<suffix>``), then
    move it and its sidecar JSON into place together. A failed export or check leaves what was at ``path`` before
    (or nothing) with its own metadata: never an unchecked model, never one beside another model's metadata. An
    error raised inside names ``path``, not the staging name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.staging{path.suffix}")
    try:
        yield staging
    except Exception as error:
        if error.args and isinstance(error.args[0], str) and str(staging) in error.args[0]:
            error.args = (error.args[0].replace(str(staging), str(path)) + f" ({path.name} was not written)",
                          *error.args[1:])
        raise
    else:
        os.replace(staging, path)
        if metadata_path(staging).exists():
            os.replace(metadata_path(staging), metadata_path(path))
    finally:
        for leftover in (staging, metadata_path(staging)):
            leftover.unlink(missing_ok=True)


class _Outputs(nn.Module):
    """The network as a tuple-returning module (ONNX wants positional outputs), the coverage sigmoid inside
    the graph so its output keeps DeepStream's name ``output_cov/Sigmoid``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net.predict(images)
        return out["cov"], out["bbox"]


def export_onnx(net: nn.Module, path: str | Path, input_hw: tuple[int, int], opset: int = 17,
                exporter: str = "torchscript", simplify: bool = False) -> Path:
    """Write ``path`` atomically. ``exporter``: ``torchscript`` (torch.onnx's classic tracer) or ``dynamo``."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"export.exporter must be one of {EXPORTERS}, got '{exporter}'")
    model = _Outputs(net).eval()
    dummy = torch.rand(1, 3, *input_hw)
    with atomic_path(path) as tmp, torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(model, (dummy,), None, dynamo=True, opset_version=opset,
                                        input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS),
                                        dynamic_shapes={"images": {0: batch}}, external_data=False)
            program.save(str(tmp), external_data=False)
        else:
            torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS),
                              dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUTS[0]: {0: "batch"},
                                            ONNX_OUTPUTS[1]: {0: "batch"}})
        proto = onnx.load(str(tmp))
        if simplify:
            proto = simplify_graph(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return Path(path)


def simplify_graph(proto: Any) -> Any:
    """Constant folding and graph clean-up with onnxslim when it is installed (optional)."""
    try:
        import onnxslim
    except ImportError:
        log.warning("export.simplify=true needs onnxslim (pip install onnxslim); exporting unsimplified")
        return proto
    return onnxslim.slim(proto)


def verify_onnx(path: str | Path, net: nn.Module, images: np.ndarray, atol: float = 1e-3) -> dict[str, float]:
    """Run ONNX Runtime and PyTorch on the same images; :class:`ExportCheckError` if outputs differ by more than
    ``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: images.astype(np.float32)})
    with torch.no_grad():
        ref = net.eval().predict(torch.from_numpy(images))
    diffs = {"cov": float(np.abs(got[0] - ref["cov"].numpy()).max()),
             "bbox": float(np.abs(got[1] - ref["bbox"].numpy()).max())}
    if max(diffs.values()) > atol:
        raise ExportCheckError(f"{path}: ONNX Runtime differs from PyTorch by up to {max(diffs.values()):.3g} (cov "
                               f"{diffs['cov']:.3g}, bbox {diffs['bbox']:.3g}) on {len(images)} images, more than the "
                               f"tolerance {atol:g} (export.atol, export.qat_atol)")
    return diffs


def write_model_metadata(path: str | Path, meta: dict[str, Any]) -> Path:
    """The contract written twice: into an ONNX model's own ``metadata_props`` (so the file alone is enough to run
    it) and as the sidecar ``<file name>.json`` (readable without onnx; an engine has only this one)."""
    import onnx

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        proto = onnx.load(str(path))
        kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True, default=str))
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    return write_json(metadata_path(path), meta)
