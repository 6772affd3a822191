import logging

import numpy as np
import pytest

from gridface.data.sample import LabelError
from gridface.evaluation.widerface import (
    WiderGroundTruth,
    evaluate_predictions,
    load_ground_truth,
    load_predictions,
    parse_prediction_file,
    write_submission,
)

from .widerface_reference import evaluate_reference

OFFICIAL_FULL = {"easy": 0.9324932633835993, "medium": 0.9127942909886333, "hard": 0.8297205022059916}
OFFICIAL_MINI = {"easy": 0.9225273450313023, "medium": 0.9075044520819315, "hard": 0.9008606815237921}


@pytest.fixture(scope="module")
def yolov7_preds(shared_data):
    return load_predictions(shared_data / "widerface" / "preds_yolov7face")


def test_reproduces_official_tool_on_full_validation(shared_data, yolov7_preds):
    gt = load_ground_truth(shared_data / "widerface" / "val_gt")
    assert len(gt) == 3226 and sum(len(b) for b in gt.boxes) == 39708
    result = evaluate_predictions(yolov7_preds, gt)
    for setting, ap in OFFICIAL_FULL.items():
        assert result[setting].ap == pytest.approx(ap, abs=1e-6)


def test_reproduces_official_tool_on_mini_val(shared_data, yolov7_preds):
    gt = load_ground_truth(shared_data / "widerface" / "mini_val" / "ground_truth")
    assert [int(sum(len(k) for k in gt.settings[s])) for s in ("easy", "medium", "hard")] == [87, 196, 671]
    result = evaluate_predictions(yolov7_preds, gt)
    for setting, ap in OFFICIAL_MINI.items():
        assert result[setting].ap == pytest.approx(ap, abs=1e-6)


def test_ground_truth_as_predictions_scores_one(shared_data):
    gt = load_ground_truth(shared_data / "widerface" / "mini_val" / "ground_truth")
    rng = np.random.default_rng(0)
    preds = {(e, n): np.concatenate([b, rng.uniform(0.5, 1.0, (len(b), 1))], 1)
             for e, n, b in zip(gt.events, gt.names, gt.boxes, strict=True)}
    result = evaluate_predictions(preds, gt)
    assert all(r.ap == pytest.approx(1.0) for r in result.values())


def test_text_ground_truth_has_one_all_setting(shared_data):
    gt = load_ground_truth(shared_data / "widerface" / "mini_val" / "wider_face_val_bbx_gt.txt")
    assert list(gt.settings) == ["all"] and sum(len(k) for k in gt.settings["all"]) == 831 - 80


def random_problem(seed, n_images=25):
    rng = np.random.default_rng(seed)
    events, names, boxes, easy, hard = [], [], [], [], []
    preds = {}
    for i in range(n_images):
        g = int(rng.integers(0, 12))
        xy = rng.uniform(0, 500, (g, 2)).round()
        wh = rng.uniform(4, 90, (g, 2)).round()
        b = np.concatenate([xy, wh], 1)
        events.append(f"{i % 3}--Ev")
        names.append(f"img_{i}")
        boxes.append(b)
        hard.append(np.flatnonzero(rng.random(g) < 0.8))
        easy.append(np.flatnonzero((rng.random(g) < 0.4) & np.isin(np.arange(g), hard[-1])))
        k = int(rng.integers(0, 15))
        src = b[rng.integers(0, max(g, 1), k)] if g else rng.uniform(0, 400, (k, 4))
        d = src + rng.normal(0, 4, src.shape)
        d[:, 2:] = np.abs(d[:, 2:]) + 1
        scores = rng.uniform(0, 1, (k, 1)).round(2)  # ties on purpose
        if rng.random() < 0.8 or i == 0:
            preds[(events[-1], names[-1])] = np.concatenate([d, scores], 1)
    return preds, WiderGroundTruth(events, names, boxes, {"easy": easy, "hard": hard})


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_literal_official_loop(seed):
    preds, gt = random_problem(seed)
    ours = evaluate_predictions(preds, gt)
    ref = evaluate_reference(preds, gt)
    for s in gt.settings:
        assert ours[s].ap == pytest.approx(ref[s], abs=1e-12)


def test_detection_order_does_not_matter():
    preds, gt = random_problem(3)
    shuffled = {k: v[np.random.default_rng(0).permutation(len(v))] for k, v in preds.items()}
    a, b = evaluate_predictions(preds, gt), evaluate_predictions(shuffled, gt)
    assert all(a[s].ap == b[s].ap for s in a)


def test_all_scores_equal_and_missing_images(caplog):
    preds, gt = random_problem(4)
    flat = {k: np.concatenate([v[:, :4], np.full((len(v), 1), 0.7)], 1) for k, v in preds.items()}
    with caplog.at_level(logging.WARNING):
        res = evaluate_predictions(flat, gt)
    assert all(np.isfinite(r.ap) and 0 <= r.ap <= 1 for r in res.values())
    missing = [f"{e}/{n}" for e, n in zip(gt.events, gt.names, strict=True) if (e, n) not in preds]
    assert missing and missing[0] in caplog.text and "no prediction file" in caplog.text


def test_prediction_files_round_trip_and_errors(tmp_path):
    boxes = np.array([[10, 20, 50, 80], [5, 5, 9, 9.5]])
    write_submission(tmp_path, "0--Parade", "img_1", boxes, np.array([0.9, 0.1]))
    preds = load_predictions(tmp_path)
    np.testing.assert_allclose(preds[("0--Parade", "img_1")][:, :4], [[10, 20, 40, 60], [5, 5, 4, 4.5]], atol=0.06)
    bad = tmp_path / "0--Parade" / "bad.txt"
    bad.write_text("bad\n2\n1 2 3 4 0.5\n1 2 three 4 0.5\n")
    with pytest.raises(LabelError, match=r"bad.txt:4:"):
        parse_prediction_file(bad)
    bad.write_text("bad\nmany\n")
    with pytest.raises(LabelError, match=r"bad.txt:2:"):
        parse_prediction_file(bad)


def test_missing_ground_truth_says_what_to_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="wider_face_val.mat"):
        load_ground_truth(tmp_path)
