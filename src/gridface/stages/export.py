"""The export stage (``python -m gridface.export model=<.ckpt> export=<format>``)

Formats: onnx, onnx_int8, onnx_int8_trt, tensorrt_fp32, tensorrt_fp16, tensorrt_int8.

Always writes the FP32 ONNX first (checked in ONNX Runtime against PyTorch on real images), then the
INT8 QDQ model (``*_int8.onnx``: uint8, ONNX Runtime; ``*_int8_trt.onnx``: symmetric int8, TensorRT) and/or the
TensorRT engine, each carrying its metadata (ONNX ``metadata_props``) and with ``<file name>.json`` beside it, plus
a DeepStream nvinfer config and label file.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from gridface.contract import ONNX_INPUT, deployment_metadata, embedded_metadata, read_metadata
from gridface.data.config import calibration_images, split_samples, stage_data_config
from gridface.data.dataset import iter_network_inputs
from gridface.export.deepstream import write_deepstream_config
from gridface.export.onnx_export import export_onnx, staged_model, verify_onnx, write_model_metadata
from gridface.module import GridBoxModule
from gridface.stages.checks import check_stage_config
from gridface.training.qat import STATE_KEY as QAT_STATE_KEY
from gridface.utils.checkpoint import load_checkpoint
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
    stage): only the INT8 model and/or the engine, from that ONNX. An INT8 engine is built from the symmetric
    ``*_int8_trt.onnx`` (quantized here from the FP32 ONNX, or given), never from ONNX Runtime's uint8 model."""
    check_stage_config(cfg)
    ex = cfg.export
    if not cfg.get("model"):
        raise ValueError("give model=<path to a gridface .ckpt, or an ONNX model gridface.export wrote>")
    if ex.format == "tensorrt":  # before minutes of ONNX export and INT8 calibration, not after
        from gridface.inference.tensorrt_backend import require_tensorrt

        require_tensorrt()
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    source = Path(cfg.model)
    trt_int8 = ex.format == "tensorrt" and ex.precision == "int8"
    if trt_int8 and ex.activation_type != "int8":
        raise ValueError(f"export.activation_type={ex.activation_type}: TensorRT's explicit quantization takes only "
                         "symmetric int8 Q/DQ (zero-points 0); export=tensorrt_int8 needs export.activation_type=int8")
    int8 = ex.format == "onnx_int8" or trt_int8
    qat = source.suffix.lower() != ".onnx" and bool(load_checkpoint(source).get(QAT_STATE_KEY))
    if qat and int8 and ex.activation_type != "int8":
        raise ValueError(f"model={source} is a quantization-aware training checkpoint: its INT8 model is TensorRT's "
                         "symmetric Q/DQ graph (export=onnx_int8_trt or export=tensorrt_int8), not ORT's uint8")
    folder = ex.calibration.get("folder")
    if int8 and not qat and folder and not Path(folder).expanduser().is_dir():  # before the FP32 export, not after
        raise FileNotFoundError(f"export.calibration.folder = '{folder}' is not a folder")
    splits = ("val", "train") if int8 and not qat and not folder else ("val",)
    if source.suffix.lower() == ".onnx":
        onnx_path, meta, images, data = existing_onnx(cfg, source, splits)
        result: dict[str, Any] = {"onnx": str(onnx_path)}
        if is_int8(meta):
            check_int8_source(cfg, source, meta)
            int8 = False  # a TensorRT-bound INT8 model goes to TensorRT as it is
        elif int8 and meta.get("float_of_qat"):  # calibrated afresh, its trained ranges would be thrown away
            raise ValueError(f"model={source} is the FP32 model of a quantization-aware training checkpoint "
                             f"({meta.get('source_checkpoint')}): its INT8 model is written from that checkpoint "
                             "with its trained ranges: model=<that .ckpt> export=onnx_int8_trt (or tensorrt_int8); "
                             "calibrated again here, they would be thrown away")
    else:
        onnx_path, meta, images, data = fp32_from_checkpoint(cfg, source, out_dir, splits)
        result = {"onnx": str(onnx_path), "onnx_max_abs_diff": meta["verify_max_abs_diff"]}
    stem, hw = Path(meta.get("fp32_onnx") or onnx_path.name).stem, tuple(meta["input_hw"])
    deploy_path, deploy_meta = onnx_path, meta

    if int8 and qat:
        int8_path, deploy_meta, diffs = qat_int8_from_checkpoint(cfg, source, out_dir, onnx_path, meta, images)
        result.update(onnx_int8=str(int8_path), onnx_int8_max_abs_diff=diffs)
        deploy_path = int8_path
    elif int8:
        from gridface.export.quantize import int8_model_path, quantize_int8, scheme

        calib, calib_record = calibration_images(data, ex.calibration.images, ex.calibration.get("seed", 0),
                                                 ex.calibration.get("folder"))
        print(f"INT8 calibration: {calib_record['drawn']} images drawn from the {calib_record['source']} "
              f"({calib_record['from']} images, seed {calib_record['seed']})")
        int8_path = out_dir / int8_model_path(onnx_path, ex.activation_type).name
        quant = scheme(ex.activation_type)
        with staged_model(int8_path) as staging:
            used: dict[str, int] = {}
            quantize_int8(onnx_path, staging, calib, hw, ex.calibration.method, ex.calibration.per_channel,
                          ex.calibration.batch_size, ex.activation_type, ex.calibration.keep_head_float,
                          ex.calibration.keep_stem_float, list(ex.calibration.float_nodes), stats=used)
            corr = int8_agreement(staging, onnx_path, images)
            deploy_meta = {**meta, "format": "onnx_int8", "precision": "int8", "quantization": quant,
                           "fp32_onnx": onnx_path.name, "calibration": {
                               **calib_record, "images": used["images"], "skipped": used["skipped"],
                               "method": ex.calibration.method,
                               "activation_type": ex.activation_type, "per_channel": ex.calibration.per_channel,
                               "keep_head_float": ex.calibration.keep_head_float,
                               "keep_stem_float": ex.calibration.keep_stem_float,
                               "float_nodes": list(ex.calibration.float_nodes)},
                           "int8_vs_fp32_correlation": corr}
            deploy_meta.pop("verify_max_abs_diff", None)
            write_model_metadata(staging, deploy_meta)
            if quant["target"] == "tensorrt":
                from gridface.export.trt_check import check_tensorrt_onnx

                check_tensorrt_onnx(staging)
        print(f"ONNX INT8 ({quant['target']}) {int8_path}: correlation with FP32 cov {corr['cov']:.4f}, "
              f"bbox {corr['bbox']:.4f}")
        result.update(onnx_int8=str(int8_path), int8_correlation=corr)
        deploy_path = int8_path

    engine_path, engine_meta = None, None
    if ex.format == "tensorrt":
        from gridface.export.tensorrt_build import build_engine, convert_fp16, tensorrt_major
        from gridface.inference.tensorrt_backend import require_tensorrt

        trt = require_tensorrt()
        build_from = deploy_path
        if ex.precision == "fp16" and tensorrt_major(trt) >= 11:
            build_from = out_dir / f"{stem}_fp16.onnx"
            with staged_model(build_from) as staging:
                convert_fp16(onnx_path, staging)
                write_model_metadata(staging, {**meta, "format": "onnx_fp16", "precision": "fp16",
                                               "fp32_onnx": onnx_path.name})
        engine_path = out_dir / f"{stem}_{ex.precision}.engine"
        batches = list(np.array_split(images, max(1, len(images) // 8)))
        with staged_model(engine_path) as staging:
            trt_meta = build_engine(build_from, staging, hw, ex.precision, tuple(ex.batch_profile), ex.workspace_gb,
                                    ex.timing_cache or out_dir / "timing.cache", batches,
                                    calibration_cache=engine_path.with_suffix(".calib"))
            engine_meta = {**deploy_meta, "format": "tensorrt", "onnx": build_from.name, **trt_meta}
            write_model_metadata(staging, engine_meta)
        result["engine"] = str(engine_path)
    if ex.deepstream:
        from gridface.export.deepstream import deepstream_ready

        if not deepstream_ready(deploy_meta):
            print(f"DeepStream: {deploy_path.name} is ONNX Runtime's uint8 model, which TensorRT refuses; the nvinfer "
                  f"config is for {onnx_path.name} (FP32). For an INT8 DeepStream model: export=tensorrt_int8 or "
                  "export=onnx_int8_trt")
            deploy_path, deploy_meta = onnx_path, meta
        ds_cfg, labels = write_deepstream_config(deploy_path, deploy_meta, engine_path, engine_meta, out_dir)
        result.update(deepstream_config=str(ds_cfg), labels=str(labels))
    write_json(out_dir / "export.json", result)
    return result


def qat_int8_from_checkpoint(cfg: DictConfig, checkpoint: Path, out_dir: Path, onnx_path: Path, meta: dict[str, Any],
                             images: np.ndarray) -> tuple[Path, dict[str, Any], dict[str, float]]:
    """A QAT checkpoint's own Q/DQ graph (its trained quantizer ranges; no calibration) as ``<model>_int8_trt.onnx``,
    checked in ONNX Runtime against the fake-quantized PyTorch network and against TensorRT's rules."""
    from gridface.export.quantize import int8_model_path, scheme
    from gridface.export.trt_check import check_tensorrt_onnx

    ex = cfg.export
    module = GridBoxModule.from_checkpoint(checkpoint).eval()
    int8_path = out_dir / int8_model_path(onnx_path, "int8").name
    with staged_model(int8_path) as staging:
        export_onnx(module.net, staging, tuple(meta["input_hw"]), opset=ex.opset, exporter="torchscript")
        diffs = verify_onnx(staging, module.net, images, ex.qat_atol)
        deploy_meta = {**meta, "format": "onnx_int8", "precision": "int8", "quantization": scheme("int8"),
                       "fp32_onnx": onnx_path.name, "qat": module.qat_record, "verify_max_abs_diff": diffs,
                       "exporter": "torchscript"}  # Model Optimizer's Q/DQ export, whatever export.exporter says
        deploy_meta.pop("float_of_qat", None)
        write_model_metadata(staging, deploy_meta)
        check_tensorrt_onnx(staging)
    print(f"ONNX INT8 (QAT, tensorrt) {int8_path}: max |ORT - PyTorch QAT| cov {diffs['cov']:.2e}, "
          f"bbox {diffs['bbox']:.2e} on {len(images)} images (tolerance {ex.qat_atol})")
    return int8_path, deploy_meta, diffs


def is_int8(meta: dict[str, Any]) -> bool:
    return meta.get("precision") == "int8" or meta.get("format") == "onnx_int8"


def int8_target(meta: dict[str, Any]) -> str:
    """Which runtime an INT8 model's scheme is for; files from earlier versions say it by their activation type."""
    quant = meta.get("quantization") or {}
    if "target" in quant:
        return str(quant["target"])
    return "tensorrt" if (meta.get("calibration") or {}).get("activation_type") == "int8" else "onnxruntime"


def check_int8_source(cfg: DictConfig, source: Path, meta: dict[str, Any]) -> None:
    """An INT8 ONNX given as ``model=`` is never quantized again; only a TensorRT-bound one builds an INT8 engine."""
    ex = cfg.export
    fp32 = meta.get("fp32_onnx") or "the FP32 .onnx"
    if ex.format == "onnx_int8":
        raise ValueError(f"model={source} is already an INT8 model: export=onnx_int8 quantizes the FP32 ONNX ({fp32}) "
                         "or a checkpoint")
    if ex.precision != "int8":
        raise ValueError(f"model={source} is an INT8 model: export=tensorrt_{ex.precision} builds from the FP32 ONNX "
                         f"({fp32}) or a checkpoint")
    if int8_target(meta) != "tensorrt":
        raise ValueError(f"model={source} is ONNX Runtime's uint8 INT8 model, which TensorRT refuses (asymmetric, "
                         f"uint8 Q/DQ): give the FP32 ONNX ({fp32}) or the checkpoint with export=tensorrt_int8")


def fp32_from_checkpoint(cfg: DictConfig, checkpoint: Path, out_dir: Path, splits: tuple[str, ...]
                         ) -> tuple[Path, dict[str, Any], np.ndarray, dict[str, Any]]:
    """Export the checkpoint's network as FP32 ONNX and check it in ONNX Runtime against PyTorch on real images."""
    module = GridBoxModule.from_checkpoint(checkpoint).eval()
    if module.qat_record is None:
        return fp32_onnx(cfg, module, checkpoint, out_dir / f"{checkpoint.stem}.onnx", splits)
    from gridface.training.qat import disabled_quantizers

    with disabled_quantizers(module.net):  # a QAT checkpoint's FP32 model: the same weights, quantizers off
        return fp32_onnx(cfg, module, checkpoint, out_dir / f"{checkpoint.stem}.onnx", splits)


def fp32_onnx(cfg: DictConfig, module: GridBoxModule, checkpoint: Path, onnx_path: Path, splits: tuple[str, ...]
              ) -> tuple[Path, dict[str, Any], np.ndarray, dict[str, Any]]:
    ex = cfg.export
    net = module.net
    hw = tuple(ex.input_size) if ex.get("input_size") else module.input_hw
    if hw[0] % module.net.stride or hw[1] % module.net.stride:
        raise ValueError(f"export.input_size {list(hw)} must be multiples of {module.net.stride}")
    module.input_hw = hw  # fully convolutional: deploy at another size than training
    data, origin = stage_data_config(cfg.get("dataset"), module.hparams.get("data"), checkpoint, splits)
    log.info("export: verification images from the val split of %s", origin)
    images = load_images([s.image for s in split_samples(data, "val")], hw, ex.verify_images)
    with staged_model(onnx_path) as staging:
        export_onnx(net, staging, hw, opset=ex.opset, exporter=ex.exporter, simplify=ex.simplify)
        diffs = verify_onnx(staging, net, images, ex.atol)
        qat = {} if module.qat_record is None else {"float_of_qat": module.qat_record}  # its INT8 is the checkpoint's
        meta = model_metadata(module, checkpoint, "onnx_fp32", precision="fp32", exporter=ex.exporter,
                              opset=ex.opset, verify_max_abs_diff=diffs, **qat)
        write_model_metadata(staging, meta)
    print(f"ONNX FP32 {onnx_path}: max |ORT - PyTorch| cov {diffs['cov']:.2e}, bbox {diffs['bbox']:.2e} "
          f"on {len(images)} images (tolerance {ex.atol})")
    return onnx_path, meta, images, data


def existing_onnx(cfg: DictConfig, onnx_path: Path, splits: tuple[str, ...]
                  ) -> tuple[Path, dict[str, Any], np.ndarray, dict[str, Any]]:
    """An ONNX model this stage wrote before (its metadata beside it), to quantize or build an engine from."""
    if cfg.export.format == "onnx":
        raise ValueError(f"model={onnx_path} is already ONNX: export=onnx needs a checkpoint; give export=onnx_int8 "
                         "or export=tensorrt_* to derive a model from it")
    meta = read_metadata(onnx_path)
    embedded_metadata(onnx_path)  # the file itself is a whole ONNX model (one line if not, before any work)
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
