"""``python -m gridface.export checkpoint=<.ckpt> export=<format>``

Formats: onnx, onnx_int8, tensorrt_fp32, tensorrt_fp16, tensorrt_int8.

Always writes the FP32 ONNX first (checked in ONNX Runtime against PyTorch on real images), then the
INT8 QDQ model and/or the TensorRT engine, each with a metadata JSON beside it, plus a DeepStream
nvinfer config and label file.
"""

from __future__ import annotations

import itertools
import logging
import platform
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from gridface.data.config import calibration_images, split_samples, stage_data_config
from gridface.data.dataset import iter_network_inputs
from gridface.export.deepstream import write_deepstream_config
from gridface.export.onnx_export import export_onnx, verify_onnx
from gridface.inference.backends import ONNX_INPUT, ONNX_OUTPUTS, metadata_path
from gridface.module import GridBoxModule
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir
from gridface.utils.io import write_json
from gridface.utils.validate import check_stage_config

log = logging.getLogger(__name__)


def load_images(paths: list, input_hw: tuple[int, int], limit: int) -> np.ndarray:
    out = list(itertools.islice(iter_network_inputs(paths, input_hw), limit))
    if not out:
        raise ValueError("no readable images to verify the export with; check the dataset paths")
    return np.stack(out)


def model_metadata(module: GridBoxModule, checkpoint: str | Path, fmt: str, **extra: Any) -> dict[str, Any]:
    """What a deployed model needs beside it: I/O contract, post-processing, training data, versions."""
    import onnx
    import onnxruntime

    import gridface

    return {"format": fmt, "input_name": ONNX_INPUT, "output_names": list(ONNX_OUTPUTS),
            "input_hw": list(module.input_hw), "input_scale": 1 / 255, "color": "RGB", "letterbox": "centred",
            "class_names": list(module.class_names), "stride": module.net.stride,
            "postprocess": dict(module.hparams.get("postprocess") or {}), "source_checkpoint": str(checkpoint),
            "data": module.hparams.get("data"),
            "versions": {"gridface": gridface.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
            **extra}


def run(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    ex = cfg.export
    if not cfg.get("checkpoint"):
        raise ValueError("give checkpoint=<path to a gridface .ckpt>")
    module = GridBoxModule.from_checkpoint(cfg.checkpoint).eval()
    net = module.net
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    stem = Path(cfg.checkpoint).stem
    onnx_path = out_dir / f"{stem}.onnx"
    hw = tuple(ex.input_size) if ex.get("input_size") else module.input_hw
    if hw[0] % module.net.stride or hw[1] % module.net.stride:
        raise ValueError(f"export.input_size {list(hw)} must be multiples of {module.net.stride}")
    module.input_hw = hw  # fully convolutional: deploy at another size than training
    export_onnx(net, onnx_path, hw, opset=ex.opset, exporter=ex.exporter, simplify=ex.simplify)
    int8 = ex.format in ("onnx_int8", "tensorrt") and (ex.format == "onnx_int8" or ex.precision == "int8")
    data, origin = stage_data_config(cfg.get("dataset"), module.hparams.get("data"), cfg.checkpoint,
                                     ("val", "train") if int8 and not ex.calibration.get("folder") else ("val",))
    log.info("export: verification images from the val split of %s", origin)
    val_paths = [s.image for s in split_samples(data, "val")]
    images = load_images(val_paths, hw, ex.verify_images)
    diffs = verify_onnx(onnx_path, net, images, ex.atol)
    print(f"ONNX FP32 {onnx_path}: max |ORT - PyTorch| cov {diffs['cov']:.2e}, bbox {diffs['bbox']:.2e} "
          f"on {len(images)} images (tolerance {ex.atol})")
    meta = model_metadata(module, cfg.checkpoint, "onnx_fp32", exporter=ex.exporter, opset=ex.opset,
                          verify_max_abs_diff=diffs)
    write_json(metadata_path(onnx_path), meta)
    result: dict[str, Any] = {"onnx": str(onnx_path), "onnx_max_abs_diff": diffs}
    deploy_path, precision = onnx_path, "fp32"

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


def int8_agreement(int8_path: Path, fp32_path: Path, images: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    a = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: images})
    b = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: images})
    pairs = zip(("cov", "bbox"), a, b, strict=True)
    return {name: float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for name, x, y in pairs}


@hydra.main(config_path=config_dir(), config_name="export", version_base="1.3")
@user_errors("export")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
