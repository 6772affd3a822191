"""The export stage (``python -m gridface.export model=<.ckpt> export=<format>``)

Formats: onnx, onnx_int8, tensorrt_fp32, tensorrt_fp16, tensorrt_int8.

Always writes the FP32 ONNX first (checked in ONNX Runtime against PyTorch on real images), then the
INT8 QDQ model and/or the TensorRT engine, each with a metadata JSON beside it, plus a DeepStream
nvinfer config and label file.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from gridface.contract import ONNX_INPUT, deployment_metadata, metadata_path, read_metadata
from gridface.data.config import calibration_images, split_samples, stage_data_config
from gridface.data.dataset import iter_network_inputs
from gridface.export.deepstream import write_deepstream_config
from gridface.export.onnx_export import export_onnx, verify_onnx
from gridface.module import GridBoxModule
from gridface.stages.checks import check_stage_config
from gridface.utils.io import write_json

log = logging.getLogger(__name__)


def load_images(paths: list, input_hw: tuple[int, int], limit: int) -> np.ndarray:
    out = list(itertools.islice(iter_network_inputs(paths, input_hw), limit))
    if not out:
        raise ValueError("no readable images to verify the export with; check the dataset paths")
    return np.stack(out)


def model_metadata(module: GridBoxModule, checkpoint: str | Path, fmt: str, **extra: Any) -> dict[str, Any]:
    """The contract's metadata for a model exported from ``module``."""
    import onnx
    import onnxruntime

    return deployment_metadata(fmt, module.input_hw, list(module.class_names), module.net.stride,
                               dict(module.hparams.get("postprocess") or {}), checkpoint, module.hparams.get("data"),
                               {"torch": torch.__version__, "onnx": onnx.__version__,
                                "onnxruntime": onnxruntime.__version__}, **extra)


def run(cfg: DictConfig) -> dict[str, Any]:
    """``model=<.ckpt>``: the FP32 ONNX first, then what ``export.format`` adds; ``model=<.onnx>`` (written by this
    stage): only the INT8 model and/or the engine, from that ONNX."""
    check_stage_config(cfg)
    ex = cfg.export
    if not cfg.get("model"):
        raise ValueError("give model=<path to a gridface .ckpt, or an ONNX model gridface.export wrote>")
    if ex.format == "tensorrt":  # before minutes of ONNX export and INT8 calibration, not after
        from gridface.inference.tensorrt_backend import require_tensorrt

        require_tensorrt()
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    source = Path(cfg.model)
    int8 = ex.format in ("onnx_int8", "tensorrt") and (ex.format == "onnx_int8" or ex.precision == "int8")
    splits = ("val", "train") if int8 and not ex.calibration.get("folder") else ("val",)
    if source.suffix.lower() == ".onnx":
        onnx_path, meta, images, data = existing_onnx(cfg, source, splits)
        result: dict[str, Any] = {"onnx": str(onnx_path)}
        int8 = int8 and meta.get("format") != "onnx_int8"  # a QDQ model goes to TensorRT as it is
    else:
        onnx_path, meta, images, data = fp32_from_checkpoint(cfg, source, out_dir, splits)
        result = {"onnx": str(onnx_path), "onnx_max_abs_diff": meta["verify_max_abs_diff"]}
    stem, hw = onnx_path.stem, tuple(meta["input_hw"])
    deploy_path, precision = onnx_path, "int8" if meta.get("format") == "onnx_int8" else "fp32"

    if int8:
        from gridface.export.quantize import quantize_int8

        calib, calib_record = calibration_images(data, ex.calibration.images, ex.calibration.get("seed", 0),
                                                 ex.calibration.get("folder"))
        print(f"INT8 calibration: {calib_record['drawn']} images drawn from the {calib_record['source']} "
              f"({calib_record['from']} images, seed {calib_record['seed']})")
        int8_path = out_dir / f"{stem}_int8.onnx"
        quantize_int8(onnx_path, int8_path, calib, hw, ex.calibration.method, ex.calibration.per_channel,
                      ex.calibration.batch_size, ex.activation_type, ex.calibration.keep_head_float,
                      ex.calibration.keep_stem_float, list(ex.calibration.float_nodes))
        corr = int8_agreement(int8_path, onnx_path, images)
        print(f"ONNX INT8 {int8_path}: correlation with FP32 cov {corr['cov']:.4f}, bbox {corr['bbox']:.4f}")
        write_json(metadata_path(int8_path), {**meta, "format": "onnx_int8", "calibration": {
            **calib_record, "images": len(calib), "method": ex.calibration.method,
            "activation_type": ex.activation_type,
            "per_channel": ex.calibration.per_channel, "keep_head_float": ex.calibration.keep_head_float,
            "keep_stem_float": ex.calibration.keep_stem_float, "float_nodes": list(ex.calibration.float_nodes)},
            "int8_vs_fp32_correlation": corr})
        result.update(onnx_int8=str(int8_path), int8_correlation=corr)
        deploy_path, precision = int8_path, "int8"

    engine_path = None
    if ex.format == "tensorrt":
        from gridface.export.tensorrt_build import build_engine, convert_fp16, tensorrt_major
        from gridface.inference.tensorrt_backend import require_tensorrt

        trt = require_tensorrt()
        source = deploy_path
        if ex.precision == "fp16" and tensorrt_major(trt) >= 11:
            source = convert_fp16(onnx_path, out_dir / f"{stem}_fp16.onnx")
        engine_path = out_dir / f"{stem}_{ex.precision}.engine"
        batches = list(np.array_split(images, max(1, len(images) // 8)))
        trt_meta = build_engine(source, engine_path, hw, ex.precision, tuple(ex.batch_profile), ex.workspace_gb,
                                ex.timing_cache or out_dir / "timing.cache", batches)
        write_json(metadata_path(engine_path), {**meta, "format": "tensorrt", **trt_meta})
        result["engine"] = str(engine_path)
        precision = ex.precision
    if ex.deepstream:
        ds_cfg, labels = write_deepstream_config(deploy_path, meta, precision, engine_path)
        result.update(deepstream_config=str(ds_cfg), labels=str(labels))
    write_json(out_dir / "export.json", result)
    return result


def fp32_from_checkpoint(cfg: DictConfig, checkpoint: Path, out_dir: Path, splits: tuple[str, ...]
                         ) -> tuple[Path, dict[str, Any], np.ndarray, dict[str, Any]]:
    """Export the checkpoint's network as FP32 ONNX and check it in ONNX Runtime against PyTorch on real images."""
    ex = cfg.export
    module = GridBoxModule.from_checkpoint(checkpoint).eval()
    net = module.net
    onnx_path = out_dir / f"{checkpoint.stem}.onnx"
    hw = tuple(ex.input_size) if ex.get("input_size") else module.input_hw
    if hw[0] % module.net.stride or hw[1] % module.net.stride:
        raise ValueError(f"export.input_size {list(hw)} must be multiples of {module.net.stride}")
    module.input_hw = hw  # fully convolutional: deploy at another size than training
    export_onnx(net, onnx_path, hw, opset=ex.opset, exporter=ex.exporter, simplify=ex.simplify)
    data, origin = stage_data_config(cfg.get("dataset"), module.hparams.get("data"), checkpoint, splits)
    log.info("export: verification images from the val split of %s", origin)
    images = load_images([s.image for s in split_samples(data, "val")], hw, ex.verify_images)
    diffs = verify_onnx(onnx_path, net, images, ex.atol)
    print(f"ONNX FP32 {onnx_path}: max |ORT - PyTorch| cov {diffs['cov']:.2e}, bbox {diffs['bbox']:.2e} "
          f"on {len(images)} images (tolerance {ex.atol})")
    meta = model_metadata(module, checkpoint, "onnx_fp32", exporter=ex.exporter, opset=ex.opset,
                          verify_max_abs_diff=diffs)
    write_json(metadata_path(onnx_path), meta)
    return onnx_path, meta, images, data


def existing_onnx(cfg: DictConfig, onnx_path: Path, splits: tuple[str, ...]
                  ) -> tuple[Path, dict[str, Any], np.ndarray, dict[str, Any]]:
    """An ONNX model this stage wrote before (its metadata beside it), to quantize or build an engine from."""
    if cfg.export.format == "onnx":
        raise ValueError(f"model={onnx_path} is already ONNX: export=onnx needs a checkpoint; give export=onnx_int8 "
                         "or export=tensorrt_* to derive a model from it")
    meta = read_metadata(onnx_path)
    hw = tuple(meta["input_hw"])
    if cfg.export.get("input_size") and tuple(cfg.export.input_size) != hw:
        raise ValueError(f"export.input_size {list(cfg.export.input_size)}: {onnx_path} has the fixed input size "
                         f"{list(hw)}; export the checkpoint again at the new size")
    data, origin = stage_data_config(cfg.get("dataset"), meta.get("data"), onnx_path, splits)
    log.info("export: verification images from the val split of %s", origin)
    images = load_images([s.image for s in split_samples(data, "val")], hw, cfg.export.verify_images)
    return onnx_path, meta, images, data


def int8_agreement(int8_path: Path, fp32_path: Path, images: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    a = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: images})
    b = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: images})
    pairs = zip(("cov", "bbox"), a, b, strict=True)
    return {name: float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for name, x, y in pairs}
