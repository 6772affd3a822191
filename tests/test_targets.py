import numpy as np
import pytest

from gridface.targets import BBOX_NORM, GridBoxTargetEncoder, decode_boxes


def owned_boxes(enc, boxes, hw):
    t = enc(boxes, np.zeros(len(boxes)), hw)
    dec = decode_boxes(t["bbox"][None].astype(np.float64), enc.stride, hw)[0, 0]
    return t, dec


def test_encode_decode_round_trip_is_exact():
    rng = np.random.default_rng(0)
    enc = GridBoxTargetEncoder()
    hw = (416, 736)
    xy = rng.uniform(0, [600, 300], (12, 2))
    wh = rng.uniform(8, 130, (12, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [736, 416])], 1)
    t, dec = owned_boxes(enc, boxes, hw)
    owned = t["cov"][0] > 0
    assert owned.sum() >= len(boxes)
    # Every owned cell decodes to exactly one of the ground-truth boxes.
    cells = dec[owned]
    dist = np.abs(cells[:, None, :] - boxes[None, :, :]).max(-1)
    assert dist.min(1).max() < 1e-4


def test_coverage_in_unit_interval_with_soft_edges():
    enc = GridBoxTargetEncoder()
    t = enc(np.array([[100.0, 50.0, 260.0, 230.0]]), np.array([0]), (320, 480))
    cov = t["cov"][0]
    assert cov.min() >= 0 and cov.max() <= 1
    assert cov.max() == 1.0
    soft = (cov > 0) & (cov < 1)
    assert soft.sum() > 4, "ellipse border cells should be fractional"
    # Coverage is centred on the box centre (180, 140) px = (11.25, 8.75) cells
    jj, ii = np.mgrid[: cov.shape[0], : cov.shape[1]] + 0.5
    assert (cov * ii).sum() / cov.sum() == pytest.approx(180 / 16, abs=0.1)
    assert (cov * jj).sum() / cov.sum() == pytest.approx(140 / 16, abs=0.1)


def test_cov_norm_is_area_normalised():
    enc = GridBoxTargetEncoder()
    big = enc(np.array([[0.0, 0.0, 160.0, 160.0]]), np.array([0]), (320, 320))
    rx, ry = enc.ellipse_radii(np.array([[0.0, 0.0, 160.0, 160.0]]))
    np.testing.assert_allclose(big["cov_norm"][0].max(), 1.0 / (4 * rx[0] * ry[0]), rtol=1e-6)


def test_tiny_box_gets_at_least_min_radius():
    enc = GridBoxTargetEncoder()
    t = enc(np.array([[100.0, 100.0, 104.0, 104.0]]), np.array([0]), (224, 224))
    assert (t["cov"][0] > 0).sum() >= 3
    rx, ry = enc.ellipse_radii(np.array([[100.0, 100.0, 104.0, 104.0]]))
    assert min(rx[0], ry[0]) == pytest.approx(1.0)


def test_later_box_clears_its_dead_zone_and_owns_it():
    """Boxes are drawn by ascending y2: the lower (nearer) box owns the cells of its dead zone."""
    enc = GridBoxTargetEncoder()
    back = np.array([40.0, 20.0, 200.0, 180.0])  # y2 = 180
    front = np.array([90.0, 60.0, 190.0, 200.0])  # y2 = 200, overlaps and is drawn later
    for order in ([back, front], [front, back]):  # input order must not matter
        t, dec = owned_boxes(enc, np.array(order), (256, 256))
        centre = (int(130 // 16), int(140 // 16))  # row, col of the front box centre
        np.testing.assert_allclose(dec[centre], front, atol=1e-4)
        # A cell of the back box far from the front box still belongs to the back box.
        np.testing.assert_allclose(dec[int(40 // 16), int(60 // 16)], back, atol=1e-4)


def test_empty_and_degenerate_boxes_give_empty_targets():
    enc = GridBoxTargetEncoder(num_classes=2)
    t = enc(np.zeros((0, 4)), np.zeros(0), (64, 96))
    assert t["cov"].shape == (2, 4, 6) and t["bbox"].shape == (8, 4, 6)
    assert not any(v.any() for v in t.values())
    t = enc(np.array([[10.0, 10.0, 10.0, 30.0]]), np.array([1]), (64, 96))
    assert not t["cov"].any()


def test_multiclass_channel_layout():
    enc = GridBoxTargetEncoder(num_classes=2)
    t = enc(np.array([[0.0, 0.0, 64.0, 64.0], [64.0, 0.0, 128.0, 64.0]]), np.array([1, 0]), (64, 128))
    assert t["cov"][1, :, :4].sum() > 0 and t["cov"][1, :, 4:].sum() == 0
    assert t["cov"][0, :, 4:].sum() > 0 and t["cov"][0, :, :4].sum() == 0
    assert np.abs(t["bbox"][4:8, :, :4]).sum() > 0 and np.abs(t["bbox"][0:4, :, :4]).sum() == 0


def test_bbox_target_uses_reference_point_and_norm():
    enc = GridBoxTargetEncoder()
    box = np.array([[16.0, 16.0, 80.0, 80.0]])
    t = enc(box, np.array([0]), (96, 96))
    j = i = 2  # cell with reference point (32.5, 32.5)
    np.testing.assert_allclose(t["bbox"][:, j, i], np.array([16.5, 16.5, 47.5, 47.5]) / BBOX_NORM, rtol=1e-6)


def test_input_size_must_be_multiple_of_stride():
    with pytest.raises(ValueError, match="multiple of the stride"):
        GridBoxTargetEncoder()(np.zeros((0, 4)), np.zeros(0), (100, 160))


def test_label_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        GridBoxTargetEncoder()(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([3]), (32, 32))


def test_ignored_box_owns_no_cell_and_flags_only_uncovered_cells():
    enc = GridBoxTargetEncoder()
    counted = np.array([[16.0, 16.0, 80.0, 80.0]])
    ignored = np.array([[60.0, 60.0, 140.0, 120.0], [200.0, 20.0, 230.0, 60.0]])
    boxes = np.concatenate([counted, ignored])
    t = enc(boxes, np.zeros(3), (160, 256), ignore=np.array([False, True, True]))
    alone = enc(counted, np.zeros(1), (160, 256))
    # targets are the counted box's alone: an ignored box never becomes a positive or a regression target
    for k in ("cov", "cov_norm", "bbox"):
        np.testing.assert_array_equal(t[k], alone[k])
    ign = t["ignore"][0] > 0
    region = enc(ignored, np.zeros(2), (160, 256))["cov"][0] > 0
    assert ign.sum() > 0 and not (ign & (alone["cov"][0] > 0)).any()
    np.testing.assert_array_equal(ign, region & (alone["cov"][0] == 0))
    assert not enc(counted, np.zeros(1), (160, 256))["ignore"].any()
