from pathlib import Path

import cv2
import numpy as np
import pytest

from gridface.evaluation.ap import average_precision, f1_best_threshold, per_class_ap
from gridface.evaluation.coco import coco_metrics


def random_set(rng, n_images=40):
    dets, gts = [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 8))
        xy = rng.uniform(0, 400, (g, 2))
        wh = rng.uniform(8, 80, (g, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        d_true = gb + rng.normal(0, rng.uniform(0.5, 8), gb.shape)  # some hits, some misses
        d_true = np.concatenate([np.minimum(d_true[:, :2], d_true[:, 2:] - 1), d_true[:, 2:]], 1)
        k = int(rng.integers(0, 6))
        xy2 = rng.uniform(0, 400, (k, 2))
        d_false = np.concatenate([xy2, xy2 + rng.uniform(8, 80, (k, 2))], 1)
        db = np.concatenate([d_true[rng.random(g) < 0.8], d_false])
        ds = rng.uniform(0, 1, len(db))
        dets.append((db, ds, np.zeros(len(db), int)))
        gts.append((gb, np.zeros(g, int), np.zeros(g, bool)))
    return dets, gts


@pytest.mark.parametrize("seed", range(5))
def test_ap50_equals_coco_evaluator_with_same_interpolation(seed):
    rng = np.random.default_rng(seed)
    dets, gts = random_set(rng)
    ours = per_class_ap(dets, gts, 1, iou=0.5, interpolation="101")[0].ap
    coco = coco_metrics(dets, gts, ["face"])["AP50"]
    assert ours == pytest.approx(coco, abs=1e-9)


def test_perfect_and_empty_detections():
    rng = np.random.default_rng(1)
    _, gts = random_set(rng)
    perfect = [(gb, np.linspace(1, 0.5, len(gb)), gl) for gb, gl, _ in gts]
    assert per_class_ap(perfect, gts, 1)[0].ap == pytest.approx(1.0)
    nothing = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in gts]
    assert per_class_ap(nothing, gts, 1)[0].ap == 0.0


def test_voc_all_point_by_hand():
    # 2 gts; detections: hit (0.9), miss (0.8), hit (0.7) -> P/R: (1, .5), (.5, .5), (.667, 1)
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, "all") == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # 11-point: recall 0..0.5 -> 1.0 (6 points), 0.6..1.0 -> 2/3 (5 points)
    assert average_precision(recall, precision, "11") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_ignored_and_small_boxes_neither_hit_nor_false_positive():
    from gridface.data.transforms import Letterbox
    from gridface.evaluation.metrics import image_record
    from gridface.postprocess import Detections

    gb = np.array([[0, 0, 50, 50], [100, 100, 150, 150], [200, 200, 202, 202.5]], np.float32)
    found = Detections(gb.copy(), np.array([0.9, 0.95, 0.5], np.float32), np.zeros(3, np.int64))
    # the third face is 2.5 px high at letterbox scale 1: under a 4 px decoder cut, so ignored
    det, gt = image_record(found, Letterbox(1.0, 0.0, 0.0, 300, 300), gb, np.zeros(3, int),
                           np.array([False, True, False]), 4.0)
    assert gt[2].tolist() == [False, True, True]
    curve = per_class_ap([det], [gt], 1)[0]
    assert curve.num_gt == 1 and curve.ap == pytest.approx(1.0)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="detection lists"):
        per_class_ap([], [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool))], 1)


class TargetBackend:
    """A model whose output is the encoded ground truth of its one image (cov already probabilities)."""

    def __init__(self, targets: dict, input_hw: tuple[int, int]) -> None:
        self.targets, self.input_hw, self.path = targets, input_hw, Path("targets")

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.targets["cov"][None], self.targets["bbox"][None]


def test_encoded_ground_truth_decodes_to_ap50_1_with_default_settings_at_letterbox_scale_below_1(tmp_path):
    """Faces of 6-11 original px are 2-3.5 px after a 0.32 letterbox, under the decoder's 4 px cut: the default
    post-processing drops them, so the default evaluation must not count them either (one unit: network px)."""
    from hydra.utils import instantiate

    from gridface.data.sample import Sample
    from gridface.data.transforms import letterbox
    from gridface.evaluation.metrics import detection_metrics
    from gridface.inference.predict import predict_dataset
    from gridface.postprocess import GridBoxDecoder

    from .helpers import compose_config

    cfg = compose_config("train", tmp_path, tmp_path)
    hw = (192, 320)
    image = np.zeros((600, 1000, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "crowd.png"), image)
    _, lb = letterbox(image, hw)
    assert lb.scale == pytest.approx(0.32)
    big = [[40, 60, 140, 180], [300, 100, 380, 190], [520, 300, 560, 350], [700, 80, 730, 118]]  # 9-38 px in input
    small = [[100, 400, 108, 411], [400, 450, 405, 457], [800, 420, 806, 426], [880, 200, 887, 209]]  # 6-11 px
    sample = Sample(tmp_path / "crowd.png", np.array(big + small, np.float32), np.zeros(len(big + small)))
    targets = instantiate(cfg.targets, num_classes=1)(lb.to_input(sample.boxes), sample.labels, hw,
                                                      ignore=sample.ignore)
    decoder = GridBoxDecoder(**cfg.postprocess)
    dets, gts, paths = predict_dataset(TargetBackend(targets, hw), [sample], decoder, 1, 0)
    assert len(dets[0][1]) == len(big)  # the small faces are under the decoder's cut
    metrics = detection_metrics(dets, gts, ["face"], cfg.evaluation, paths, max_detections=decoder.max_detections)
    assert metrics.values["AP50"] == 1.0 and metrics.values["mAP"] == pytest.approx(1.0)


def test_coco_metrics_count_every_detection_of_a_crowd_of_more_than_100_faces():
    """A WIDER crowd image holds more than 100 faces and the decoder keeps up to 1,000 detections: COCO mAP and AR
    must not stop at 100 (the standard AR1/AR10/AR100 stay reported beside the larger one)."""
    from gridface.module import GridBoxModule

    xy = np.stack(np.meshgrid(np.arange(15) * 30.0, np.arange(10) * 30.0), -1).reshape(-1, 2)
    gb = np.concatenate([xy, xy + 20], 1)  # 150 faces of 20x20
    gts = [(gb, np.zeros(len(gb), int), np.zeros(len(gb), bool))]
    perfect = [(gb.copy(), np.linspace(1.0, 0.5, len(gb)), np.zeros(len(gb), int))]
    module = GridBoxModule(input_size=(64, 96))
    assert module.decoder.max_detections >= len(gb)
    metrics = module.compute_metrics(perfect, gts)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    coco = coco_metrics(perfect, gts, ["face"], max_dets=module.decoder.max_detections)
    assert coco["AR1"] == pytest.approx(1 / 150) and coco["AR10"] == pytest.approx(10 / 150)
    assert coco["AR100"] == pytest.approx(100 / 150) and coco["AR1000"] == pytest.approx(1.0)


def test_f1_best_threshold_is_the_lowest_kept_score_of_the_best_f1():
    """Three faces; detections scored 0.9 (hit), 0.8 (hit), 0.7 (miss), 0.6 (hit), 0.2 (miss): keeping >= 0.6
    gives P 3/4, R 3/3, F1 0.857, better than >= 0.8 (P 1, R 2/3, F1 0.8) and >= 0.2 (P 3/5, R 1, F1 0.75)."""
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    det = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [60, 0, 70, 10], [40, 0, 50, 10], [80, 0, 90, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    curves = per_class_ap([(det, scores, np.zeros(5, int))], [(gt, np.zeros(3, int), np.zeros(3, bool))], 1)
    point = f1_best_threshold(curves)
    assert point["score_threshold"] == 0.6 and point["F1"] == pytest.approx(6 / 7)
    assert point["precision"] == 0.75 and point["recall"] == 1.0
    misses = per_class_ap([(det[2:3], scores[2:3], np.zeros(1, int))], [(gt, np.zeros(3, int), np.zeros(3, bool))], 1)
    assert f1_best_threshold(misses) is None  # nothing matched: no operating point
