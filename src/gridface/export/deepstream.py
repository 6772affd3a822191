"""A DeepStream nvinfer config and label file for the exported model, with the keys TAO's FaceDetect
config uses, so the model drops into a DeepStream pipeline in place of TAO's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridface.contract import ONNX_OUTPUTS
from gridface.postprocess import decoder_defaults
from gridface.utils.io import write_text

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
CLUSTER_MODE = {"dbscan": 1, "nms": 2, "hybrid": 3}


def write_deepstream_config(model_path: Path, meta: dict[str, Any], precision: str = "fp32",
                            engine_path: Path | None = None) -> tuple[Path, Path]:
    labels = model_path.with_name(model_path.stem + "_labels.txt")
    write_text(labels, "\n".join(meta["class_names"]) + "\n")
    h, w = meta["input_hw"]
    post = {**decoder_defaults(), **(meta.get("postprocess") or {})}  # metadata without a key: the decoder's default
    lines = [
        "# DeepStream nvinfer config written by gridface.export (DetectNet_v2 / GridBox output parser)",
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={1 / 255:.10f}",
        "offsets=0.0;0.0;0.0",
        "model-color-format=0",  # RGB
        f"onnx-file={model_path.name}",
        *( [f"model-engine-file={engine_path.name}"] if engine_path else [] ),
        f"labelfile-path={labels.name}",
        f"infer-dims=3;{h};{w}",
        "batch-size=1",
        "process-mode=1",
        f"network-mode={NETWORK_MODE[precision]}",
        f"num-detected-classes={len(meta['class_names'])}",
        "interval=0",
        "gie-unique-id=1",
        f"output-blob-names={ONNX_OUTPUTS[1]};{ONNX_OUTPUTS[0]}",
        f"cluster-mode={CLUSTER_MODE[post['clustering']]}",
        "maintain-aspect-ratio=1",  # gridface letterboxes, centred
        "symmetric-padding=1",
        "",
        "[class-attrs-all]",
        f"pre-cluster-threshold={post['coverage_threshold']}",
        f"eps={post['dbscan_eps']}",
        "minBoxes=1",
        f"dbscan-min-score={post['dbscan_min_samples']}",
        f"nms-iou-threshold={post['nms_iou_threshold']}",
        f"detected-min-h={int(post['minimum_bounding_box_height'])}",
        "topk=100",
    ]
    cfg = model_path.with_name(model_path.stem + "_nvinfer.txt")
    write_text(cfg, "\n".join(lines) + "\n")
    return cfg, labels
