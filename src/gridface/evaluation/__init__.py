"""Evaluation: per-class AP (VOC / COCO interpolation), COCO mAP, WIDER FACE easy/medium/hard."""

from gridface.evaluation.ap import average_precision, match_image, per_class_ap

__all__ = ["average_precision", "match_image", "per_class_ap"]
