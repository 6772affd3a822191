from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN
from torchvision.ops import batched_nms, box_iou

from gridface.box_clustering import dbscan_boxes, nms
from gridface.postprocess import GridBoxDecoder
from gridface.targets import GridBoxTargetEncoder, decode_boxes
from tests.grid_maps import HW, one_face_maps, random_boxes_maps


def random_boxes(rng, n):
    centres = rng.uniform(20, 200, (max(1, n // 6), 2))
    pick = centres[rng.integers(len(centres), size=n)]
    wh = rng.uniform(10, 40, (n, 2))
    jitter = rng.normal(0, 2.0, (n, 4))
    return np.concatenate([pick - wh / 2, pick + wh / 2], 1) + jitter


@pytest.mark.parametrize("seed", range(8))
def test_dbscan_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    boxes = random_boxes(rng, n)
    w = rng.uniform(0.004, 1.0, n)
    eps, min_samples = float(rng.choice([0.1, 0.15, 0.3])), float(rng.choice([0.05, 0.5, 1.0, 2.0]))
    dist = 1.0 - box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    # scikit-learn takes an integer min_samples: a fractional one is the same test on weights / min_samples.
    ref = DBSCAN(eps=eps, min_samples=1, metric="precomputed").fit(dist, sample_weight=w / min_samples).labels_
    # ours never builds the n x n matrix: an x1-sorted window per box, compiled loops
    ours = dbscan_boxes(boxes, w, np.zeros(n, np.int64), eps, min_samples)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_torchvision(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    boxes = random_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float64) / n  # distinct: the kept order is then unique
    labels = rng.integers(0, 2, n)
    thr = float(rng.choice([0.0, 0.3, 0.5, 0.9]))
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thr).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, labels, thr), ref)


def perfect_maps(boxes, hw):
    enc = GridBoxTargetEncoder()
    t = enc(np.asarray(boxes, float), np.zeros(len(boxes)), hw)
    return torch.from_numpy(t["cov"])[None], torch.from_numpy(t["bbox"])[None]


@pytest.mark.parametrize("clustering", ["dbscan", "nms", "hybrid"])
def test_decoder_recovers_boxes_from_perfect_maps(clustering):
    boxes = [[30.0, 40.0, 90.0, 120.0], [150.0, 60.0, 230.0, 150.0]]
    cov, bbox = perfect_maps(boxes, (192, 256))
    det = GridBoxDecoder(clustering=clustering)(cov, bbox, (192, 256))[0]
    assert len(det) == 2
    order = np.argsort(det.boxes[:, 0])
    np.testing.assert_allclose(det.boxes[order], boxes, atol=1e-3)


def test_aggregate_and_mean_confidence():
    cov, bbox = perfect_maps([[30.0, 40.0, 130.0, 160.0]], (192, 256))
    agg = GridBoxDecoder(score="aggregate", confidence_model="aggregate_cov")(cov, bbox, (192, 256))[0]
    mean = GridBoxDecoder(score="aggregate", confidence_model="mean_cov")(cov, bbox, (192, 256))[0]
    kept = cov[cov > 0.004]
    assert agg.scores[0] == pytest.approx(kept.sum().item(), rel=1e-5)
    assert mean.scores[0] == pytest.approx(kept.mean().item(), rel=1e-5)
    assert agg.scores[0] > 1.0  # can exceed 1, as in TAO


@pytest.mark.parametrize("clustering", ["dbscan", "nms", "hybrid"])
def test_default_score_is_the_highest_coverage_of_the_box_in_0_1(clustering):
    """What a user thresholds: each box's best cell's sigmoid coverage, whatever the clustering; AP's order among
    boxes of one cluster size is kept, and TAO's aggregate stays available."""
    cov, bbox = perfect_maps([[30.0, 40.0, 130.0, 160.0], [150.0, 30.0, 200.0, 90.0]], (192, 256))
    det = GridBoxDecoder(clustering=clustering)(cov, bbox, (192, 256))[0]
    assert len(det) == 2 and ((det.scores > 0) & (det.scores <= 1)).all()
    assert det.scores.max() == pytest.approx(float(cov.max()), rel=1e-6)
    assert GridBoxDecoder(score="aggregate")(cov, bbox, (192, 256))[0].scores.max() > 1.0


def test_model_score_threshold_is_recorded_by_the_decoder_and_applied_by_detector_only(caplog):
    from gridface.inference.base import ModelBackend
    from gridface.inference.detector import Detector

    cov, bbox = (t.numpy() for t in perfect_maps([[30.0, 40.0, 130.0, 160.0], [150.0, 30.0, 200.0, 90.0]],
                                                  (192, 256)))
    cov[0, 0] *= np.where(np.arange(256 // 16) < 9, 0.3, 1.0)[None, :]  # the left face weak
    post = {"score_threshold": 0.5}
    assert len(GridBoxDecoder(**post)(cov, bbox, (192, 256))[0]) == 2  # evaluation: every box ranked

    class Maps(ModelBackend):
        def run(self, images):
            return cov, bbox

    backend = Maps(Path("m.onnx"), (192, 256), ["face"], 16, post)
    img = np.zeros((192, 256, 3), np.uint8)
    assert len(Detector(backend)(img)) == 1  # the model's own threshold drops the weak face
    assert len(Detector(backend, confidence_threshold=0)(img)) == 2  # the caller's cut replaces it
    assert "does not apply" not in caplog.text
    assert len(Detector(backend, score="aggregate")(img)) == 2  # chosen for another score: not applied, and said
    assert "threshold 0.5 was chosen for score=confidence and does not apply to score=aggregate" in caplog.text


def test_minimum_height_and_confidence_threshold_filter():
    cov, bbox = perfect_maps([[30.0, 40.0, 90.0, 120.0]], (192, 256))
    assert len(GridBoxDecoder(minimum_bounding_box_height=100)(cov, bbox, (192, 256))[0]) == 0
    assert len(GridBoxDecoder(confidence_threshold=1e6, score="aggregate")(cov, bbox, (192, 256))[0]) == 0
    found = GridBoxDecoder(score="aggregate")(cov, bbox, (192, 256))[0]
    assert found.scores.max() > 1  # TAO's summed coverage: a threshold above 1 means something here
    assert len(GridBoxDecoder(confidence_threshold=float(found.scores.max()) - 0.01, score="aggregate")(
        cov, bbox, (192, 256))[0]) == 1


@pytest.mark.parametrize("settings", [{}, {"clustering": "nms", "score": "aggregate"},
                                      {"score": "aggregate", "confidence_model": "mean_cov"}])
def test_a_confidence_threshold_above_the_scores_range_is_an_error(settings):
    """Scores in [0, 1] (the default confidence, NMS cells, mean coverage): confidence_threshold=1.5 kept nothing,
    silently (0 faces on every image)."""
    with pytest.raises(ValueError, match=r"postprocess.confidence_threshold = 1.5: the scores .* lie in \[0, 1\]"):
        GridBoxDecoder(confidence_threshold=1.5, **settings)


def test_batched_empty_and_nan_inputs():
    dec = GridBoxDecoder()
    cov = torch.zeros(3, 1, 12, 16)
    bbox = torch.zeros(3, 4, 12, 16)
    cov[1, 0, 3, 3] = float("nan")
    bbox[2] = float("nan")
    cov[2] = 0.9
    out = dec(cov, bbox, (192, 256))
    assert len(out) == 3 and all(len(d) == 0 for d in out)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="clustering"):
        GridBoxDecoder(clustering="kmeans")
    with pytest.raises(ValueError, match="confidence_model"):
        GridBoxDecoder(confidence_model="max")


@pytest.mark.parametrize("seed", range(3))
def test_dbscan_on_a_full_736x416_grid_equals_scikit_learn(seed):
    """Every one of the 46x26 cells above the threshold, each regressing a 40-200 px box around itself: the
    neighbour search must find exactly the pairs the full IoU matrix has."""
    rng = np.random.default_rng(seed)
    boxes = decode_boxes(random_boxes_maps(seed)[1].astype(np.float64), 16, HW)[0, 0].reshape(-1, 4)
    wts = rng.uniform(0.01, 1.0, len(boxes))
    for eps in (0.15, 0.3):
        dist = 1.0 - box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
        ref = DBSCAN(eps=eps, min_samples=1, metric="precomputed").fit(dist, sample_weight=wts).labels_
        np.testing.assert_array_equal(dbscan_boxes(boxes, wts, np.zeros(len(boxes), np.int64), eps, 1.0), ref)
        assert len(set(ref)) > 10


@pytest.mark.parametrize("sigma_px", [0.0, 3.0, 8.0, 20.0])
def test_dbscan_when_every_cell_regresses_one_face_equals_scikit_learn(sigma_px):
    """The case that made DBSCAN slow (up to 700k neighbour pairs): groups of mutual neighbours, near-boundary
    group pairs and border boxes must still give scikit-learn's labels exactly."""
    cov, bbox = one_face_maps(int(sigma_px), sigma_px)
    boxes = decode_boxes(bbox.astype(np.float64), 16, HW)[0, 0].reshape(-1, 4)
    wts = cov.reshape(-1).astype(np.float64)
    dist = 1.0 - box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    for eps, min_samples in ((0.15, 1.0), (0.05, 3.0)):
        ref = DBSCAN(eps=eps, min_samples=1, metric="precomputed").fit(dist, sample_weight=wts / min_samples).labels_
        ours = dbscan_boxes(boxes, wts, np.zeros(len(boxes), np.int64), eps, min_samples)
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("seed", range(6))
def test_dbscan_with_classes_duplicates_and_crowds_equals_scikit_learn(seed):
    """Two classes (never clustered together), exact duplicates and crowds of near-copies beside lone boxes."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(50, 400))
    centres = rng.uniform(20, 600, (max(1, n // 40), 2))
    sizes = np.exp(rng.uniform(np.log(8), np.log(300), (len(centres), 2)))
    pick = rng.integers(len(centres), size=n)
    jitter = float(rng.choice([0.0, 1.0, 4.0]))
    c = centres[pick] + rng.normal(0, jitter, (n, 2))
    wh = sizes[pick] * np.exp(rng.normal(0, jitter / 100, (n, 2)))
    boxes = np.round(np.concatenate([c - wh / 2, c + wh / 2], 1), 1)
    labels = rng.integers(0, 2, n)
    w = rng.uniform(0.004, 1.0, n)
    eps, min_samples = float(rng.choice([0.1, 0.15, 0.3])), float(rng.choice([0.5, 1.0, 4.0]))
    dist = 1.0 - box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    dist[labels[:, None] != labels[None]] = 2.0
    ref = DBSCAN(eps=eps, min_samples=1, metric="precomputed").fit(dist, sample_weight=w / min_samples).labels_
    np.testing.assert_array_equal(dbscan_boxes(boxes, w, labels, eps, min_samples), ref)


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_nms_on_an_untrained_nets_scattered_boxes_equals_torchvision(sigma):
    """Every cell passes and regresses a small box of its own (an untrained head): ~1000 kept boxes."""
    rng = np.random.default_rng(int(sigma * 100))
    boxes = decode_boxes(rng.normal(0, sigma, (1, 4, 26, 46)), 16, HW)[0, 0].reshape(-1, 4)
    scores = rng.permutation(len(boxes)).astype(np.float64) / len(boxes)
    labels = np.zeros(len(boxes), np.int64)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.3).numpy()
    got = nms(boxes, scores, labels, 0.3)
    assert len(got) > 500
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_on_a_full_grid_of_scattered_faces_equals_torchvision(threshold):
    """Every cell its own 40-200 px box, two classes: hundreds kept, each suppressing a few, in both x directions."""
    cov, bbox = random_boxes_maps(int(threshold * 10))
    boxes = decode_boxes(bbox.astype(np.float64), 16, HW)[0, 0].reshape(-1, 4)
    scores = cov.reshape(-1).astype(np.float64)
    labels = np.random.default_rng(0).integers(0, 2, len(boxes))
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), threshold).numpy()
    got = nms(boxes, scores, labels, threshold)
    assert 20 < len(got) < len(boxes) - 100
    np.testing.assert_array_equal(got, ref)


def test_dbscan_boxes_without_area_are_noise_as_in_scikit_learn():
    """Zero-width and inverted boxes (an untrained head regresses them) overlap nothing, not even themselves:
    torchvision's IoU is nan or 0 for them, so scikit-learn never counts them; neither does ours."""
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 200)
    boxes[:20, 2] = boxes[:20, 0]  # zero width
    boxes[20:40, 3] = boxes[20:40, 1] - 5  # inverted
    boxes[40:60] = boxes[:20]  # copies of the zero-width ones
    w = rng.uniform(0.5, 3.0, len(boxes))
    dist = 1.0 - box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    dist[np.isnan(dist)] = 2.0
    ref = DBSCAN(eps=0.15, min_samples=1, metric="precomputed").fit(dist, sample_weight=w).labels_
    ours = dbscan_boxes(boxes, w, np.zeros(len(boxes), np.int64), 0.15, 1.0)
    np.testing.assert_array_equal(ours, ref)
    assert (ours[:60] == -1).all() and (ours[60:] >= 0).any()


def test_the_yaml_postprocess_default_is_the_decoders(tmp_path):
    """One source for the post-processing defaults: GridBoxDecoder's keyword defaults. configs/postprocess/dbscan.yaml
    (every recipe's default) repeats them key for key, and the DeepStream config falls back on them."""
    from omegaconf import OmegaConf

    from gridface.export.deepstream import write_deepstream_config
    from gridface.postprocess import decoder_defaults
    from gridface.utils.hydra import config_dir

    yaml_default = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "postprocess" / "dbscan.yaml"))
    assert yaml_default == decoder_defaults()
    assert vars(GridBoxDecoder(**yaml_default)) == vars(GridBoxDecoder())
    cfg, _ = write_deepstream_config(tmp_path / "m.onnx", {"class_names": ["face"], "input_hw": [416, 736]})
    text = cfg.read_text()
    d = decoder_defaults()
    assert f"pre-cluster-threshold={d['coverage_threshold']}\n" in text and f"eps={d['dbscan_eps']}\n" in text
    assert f"detected-min-h={int(d['minimum_bounding_box_height'])}\n" in text and "cluster-mode=1\n" in text

