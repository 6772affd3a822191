"""A DeepStream nvinfer config and label file for the exported model, with the keys TAO's FaceDetect
config uses, so the model drops into a DeepStream pipeline in place of TAO's.

``network-mode`` follows the model: FP32 ONNX 0, FP16 2, the symmetric int8 QDQ model 1 (explicit quantization:
no ``int8-calib-file``); an engine is named by ``model-engine-file`` with its own precision. ONNX Runtime's uint8
model gets no config: TensorRT refuses its Q/DQ."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gridface.contract import ONNX_OUTPUTS
from gridface.postprocess import decoder_defaults
from gridface.utils.io import write_text

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
CLUSTER_MODE = {"dbscan": 1, "nms": 2, "hybrid": 3}
COLOR_FORMAT = {"RGB": 0, "BGR": 1}


def precision_of(meta: dict[str, Any]) -> str:
    """fp32 | fp16 | int8 from a model's metadata (files from earlier versions: from their format)."""
    if meta.get("precision"):
        return str(meta["precision"])
    return "int8" if meta.get("format") == "onnx_int8" else "fp32"


def deepstream_ready(meta: dict[str, Any]) -> bool:
    """False for ONNX Runtime's asymmetric uint8 INT8 model, which TensorRT (so DeepStream) cannot build."""
    if precision_of(meta) != "int8":
        return True
    quant = meta.get("quantization") or {}
    target = quant.get("target") or ("tensorrt" if (meta.get("calibration") or {}).get("activation_type") == "int8"
                                     else "onnxruntime")
    return target == "tensorrt"


def threshold_note(post: dict[str, Any]) -> list[str]:
    """Comment lines naming the model's own score threshold, which this config does not carry: gridface.infer drops
    boxes below it, and nvinfer's post-cluster-threshold cuts on nvinfer's own cluster confidence, which was not
    checked against gridface's score (no DeepStream here), so the same number could drop the wrong boxes."""
    chosen = post.get("score_threshold")
    if chosen is None:
        return []
    score = post.get("score", decoder_defaults()["score"])
    return [f"# gridface.infer keeps boxes whose score={score} is >= {float(chosen):.4f} (the model's threshold);",
            "# nvinfer scores its clusters its own way, so no post-cluster-threshold is set: choose one on your data,",
            "# or expect more boxes than gridface.infer shows."]


def write_deepstream_config(model_path: Path, meta: dict[str, Any], engine_path: Path | None = None,
                            engine_meta: dict[str, Any] | None = None, out_dir: Path | None = None
                            ) -> tuple[Path, Path]:
    """``<model>_nvinfer.txt`` and ``<model>_labels.txt`` in ``out_dir`` (default: beside ``model_path``), every value
    from the metadata; the model and engine named relative to the config, as nvinfer resolves them."""
    out_dir = Path(out_dir) if out_dir is not None else model_path.parent
    if not deepstream_ready(meta):
        raise ValueError(f"{model_path.name}: an ONNX Runtime uint8 INT8 model; TensorRT and DeepStream take only "
                         "symmetric int8 Q/DQ (export=onnx_int8_trt or export=tensorrt_int8)")
    precision = precision_of(engine_meta) if engine_meta else precision_of(meta)
    labels = out_dir / f"{model_path.stem}_labels.txt"
    write_text(labels, "\n".join(meta["class_names"]) + "\n")
    h, w = meta["input_hw"]
    post = {**decoder_defaults(), **(meta.get("postprocess") or {})}  # metadata without a key: the decoder's default
    outputs = list(meta.get("output_names") or ONNX_OUTPUTS)  # [cov, bbox]; DetectNet_v2's parser lists bbox first
    lines = [
        "# DeepStream nvinfer config written by gridface.export (DetectNet_v2 / GridBox output parser)",
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={float(meta.get('input_scale', 1 / 255)):.10f}",
        "offsets=0.0;0.0;0.0",  # gridface subtracts no mean
        f"model-color-format={COLOR_FORMAT[meta.get('color', 'RGB')]}",
        f"onnx-file={os.path.relpath(model_path, out_dir)}",
        *([f"model-engine-file={os.path.relpath(engine_path, out_dir)}"] if engine_path else []),
        f"labelfile-path={labels.name}",
        f"infer-dims=3;{h};{w}",
        "batch-size=1",
        "process-mode=1",
        "network-type=0",  # detector
        f"network-mode={NETWORK_MODE[precision]}",
        f"num-detected-classes={len(meta['class_names'])}",
        "interval=0",
        "gie-unique-id=1",
        f"output-blob-names={outputs[1]};{outputs[0]}",
        f"cluster-mode={CLUSTER_MODE[post['clustering']]}",
        "maintain-aspect-ratio=1",  # gridface letterboxes, centred
        "symmetric-padding=1",
        "",
        "[class-attrs-all]",
        *threshold_note(post),
        f"pre-cluster-threshold={post['coverage_threshold']}",
        f"eps={post['dbscan_eps']}",
        "minBoxes=1",
        f"dbscan-min-score={post['dbscan_min_samples']}",
        f"nms-iou-threshold={post['nms_iou_threshold']}",
        f"detected-min-h={int(post['minimum_bounding_box_height'])}",
        "topk=100",
    ]
    cfg = out_dir / f"{model_path.stem}_nvinfer.txt"
    write_text(cfg, "\n".join(lines) + "\n")
    return cfg, labels
