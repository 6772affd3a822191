"""The detection metrics, named once: training logs them as ``val/<name>``, ``gridface.evaluate`` and the pipeline
report write them as ``<name>``.

``AP50`` (mean over classes, VOC all-point by default), ``AP50_<class>`` (every class), ``mAP`` and ``AR`` (COCO
@[.5:.95], counting up to the decoder's ``max_detections`` per image, not COCO's 100),
``wider_easy|medium|hard`` (official WIDER FACE protocol, when its ground truth is given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gridface.evaluation.ap import per_class_ap
from gridface.evaluation.coco import coco_metrics

if TYPE_CHECKING:
    from gridface.data.transforms import Letterbox
    from gridface.postprocess import Detections

Boxes = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class DetectionMetrics:
    values: dict[str, float]
    curves: dict[int, Any] = field(default_factory=dict)    # class index -> PR curve (recall, precision, ap)
    wider: dict[str, Any] = field(default_factory=dict)     # setting -> WIDER result (curve, recall by size)


def image_record(det: Detections, lb: Letterbox, gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_ignore: np.ndarray,
                 min_height: float) -> tuple[Boxes, Boxes]:
    """One image's ``(boxes, scores, labels)`` detections and ``(boxes, labels, ignore)`` ground truth in original
    pixels, as every metric takes them.

    The minimum face height has one unit, the network input's pixels: the decoder drops boxes lower than
    ``minimum_bounding_box_height`` there (TAO applies it to the network's output boxes), so a face lower than
    ``min_height`` once letterboxed can never be detected and becomes an ignore box (neither a miss nor a hit).
    """
    y = np.clip(np.asarray(gt_boxes, np.float32).reshape(-1, 4)[:, [1, 3]], 0, lb.height)
    too_low = (y[:, 1] - y[:, 0]) * lb.scale < min_height
    return (lb.to_original(det.boxes), det.scores, det.labels), (gt_boxes, gt_labels, np.asarray(gt_ignore, bool)
                                                                  | too_low)


def detection_metrics(dets: list, gts: list, class_names: list[str], evaluation: dict[str, Any],
                      paths: list[str] | None = None, wider_gt: Any = None, *,
                      max_detections: int) -> DetectionMetrics:
    """``dets`` and ``gts`` as :func:`image_record` makes them (faces under the decoder's minimum height already
    ignored); ``evaluation``: iou, interpolation, coco (the ``evaluation`` config node); ``wider_gt``: loaded
    WIDER ground truth (:func:`gridface.evaluation.widerface.load_ground_truth`); ``max_detections``: the decoder's,
    so COCO counts every detection the model can make (WIDER crowd images hold more than 100 faces)."""
    curves = per_class_ap(dets, gts, len(class_names), evaluation["iou"], evaluation["interpolation"])
    aps = [c.ap for c in curves.values() if not np.isnan(c.ap)]
    values = {"AP50": float(np.mean(aps)) if aps else 0.0}
    values.update({f"AP50_{class_names[c]}": float(curve.ap) for c, curve in curves.items()})
    if evaluation.get("coco", True):
        coco = coco_metrics(dets, gts, class_names, max_detections)
        values.update(mAP=coco["mAP"], AR=coco["AR"])
    wider = {}
    if wider_gt is not None and paths:
        from gridface.evaluation.widerface import detections_to_wider, evaluate_predictions

        wider = evaluate_predictions(detections_to_wider(dets, paths), wider_gt)
        values.update({f"wider_{s}": r.ap for s, r in wider.items()})
    return DetectionMetrics(values, curves, wider)
