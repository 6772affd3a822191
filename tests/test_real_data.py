"""The real-data path: ignore regions from every label format, WIDER FACE's layout through the real parser and
letterbox at 736x416, and the first evidence on real faces (the 19 WIDER FACE images of ../shared/data)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gridface.data.dataset import DetectionDataset, collate
from gridface.data.parsers import read_coco, read_kitti, read_widerface_txt
from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.data.transforms import letterbox
from gridface.evaluation.ap import per_class_ap
from gridface.evaluation.metrics import image_record
from gridface.loss import GridBoxLoss
from gridface.postprocess import GridBoxDecoder
from gridface.targets import GridBoxTargetEncoder, decode_boxes

from .helpers import compose_train

HW = (416, 736)


def logged_per_epoch(csv_file: Path, key: str) -> list[float]:
    """The values Lightning's CSV logger wrote for ``key``, in order."""
    rows = [r.split(",") for r in csv_file.read_text().splitlines()]
    col = rows[0].index(key)
    return [float(r[col]) for r in rows[1:] if r[col]]
COUNTED, IGNORED = [20.0, 30.0, 90.0, 110.0], [160.0, 40.0, 230.0, 120.0]


def _image(folder: Path, name: str = "img.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.full((160, 256, 3), 120, np.uint8))
    return folder / name


def _widerface(tmp: Path):
    _image(tmp / "images" / "0--Event")
    gt = tmp / "gt.txt"
    x, y, x2, y2 = IGNORED
    gt.write_text(f"0--Event/img.jpg\n2\n20 30 70 80 0 0 0 0 0 0 \n{x} {y} {x2 - x} {y2 - y} 0 0 0 1 0 0 \n")
    return read_widerface_txt(gt, tmp / "images", min_size=4.0)  # the second face is flagged invalid


def _kitti(tmp: Path):
    _image(tmp / "images")
    (tmp / "labels").mkdir()
    (tmp / "labels" / "img.txt").write_text("face 0 0 0 20 30 90 110 0 0 0 0 0 0 0\n"
                                            "DontCare -1 -1 -10 160 40 230 120 -1 -1 -1 -1000 -1000 -1000 -10\n")
    return read_kitti(tmp / "images", tmp / "labels")


def _coco(tmp: Path):
    _image(tmp / "images")
    ann = {"images": [{"id": 1, "file_name": "img.jpg", "width": 256, "height": 160}],
           "categories": [{"id": 1, "name": "face"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 30, 70, 80], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [160, 40, 70, 80], "iscrowd": 1}]}
    (tmp / "ann.json").write_text(json.dumps(ann))
    return read_coco(tmp / "ann.json", tmp / "images")


@pytest.mark.parametrize("reader", [_widerface, _kitti, _coco], ids=["wider-invalid", "kitti-dontcare", "coco-crowd"])
def test_each_formats_ignore_flag_reaches_the_loss(tmp_path, reader):
    samples = reader(tmp_path)
    assert samples[0].ignore.tolist() == [False, True]
    batch = collate([DetectionDataset(samples, (160, 256), GridBoxTargetEncoder(), None, "t")[0]])
    region = batch["ignore"].bool()
    assert region[0, 0, :, 9:].any() and not region[0, 0, :, :7].any()  # the ignored box's cells (x 160-230)
    assert batch["cov"][0, 0, :, 9:].sum() == 0  # not a positive either
    logits = torch.full_like(batch["cov"], -1.0, requires_grad=True)  # p = 0.27, never a coverage value
    GridBoxLoss()({"cov_logits": logits, "bbox": torch.zeros_like(batch["bbox"])}, batch)["loss"].backward()
    assert (logits.grad[region] == 0).all() and (logits.grad[~region] != 0).all()


def test_ground_truth_round_trips_through_letterbox_encoding_and_decoding(shared_data):
    """mini_val's 1024-wide images letterboxed into 736x416 (scale ~0.6, padded), encoded, decoded by the
    post-processing and mapped back to original pixels: every face the stride-16 grid can hold comes back; with
    the default post-processing (4 px cut in the network input) every such face that the evaluation counts."""
    mini = shared_data / "widerface" / "mini_val"
    samples = read_widerface_txt(mini / "wider_face_val_bbx_gt.txt", mini / "images", min_size=4.0)
    enc = GridBoxTargetEncoder()
    # NMS at IoU 0.99 removes only a face's own duplicate cells; no height cut (4 px in the network input is
    # 6-7 px here, and the official ground truth counts faces that small)
    decoder = GridBoxDecoder(clustering="nms", nms_iou_threshold=0.99, minimum_bounding_box_height=0.0)
    default = GridBoxDecoder(clustering="nms", nms_iou_threshold=0.99)
    dets, gts, counted, held, padded, cut = [], [], 0, 0, 0, []
    for s in samples:
        image = cv2.imread(str(s.image))
        _, lb = letterbox(image, HW)
        padded += lb.pad_x > 0 or lb.pad_y > 0
        t = enc(lb.to_input(s.boxes), s.labels, HW, ignore=s.ignore)
        cells = decode_boxes(t["bbox"][None].astype(np.float64), 16, HW)[0, 0][t["cov"][0] > 0]
        back = lb.to_original(cells.astype(np.float32))
        err = np.abs(back[:, None] - s.boxes[None]).max(-1)  # [owned cells, faces] in original pixels
        assert err.min(1).max() < 0.01  # every owned cell decodes to one face, exactly
        holds = err.min(0) < 0.01  # faces owning at least one cell
        counted += int((~s.ignore).sum())
        held += int((holds & ~s.ignore).sum())
        det = decoder(torch.from_numpy(t["cov"])[None], torch.from_numpy(t["bbox"])[None], HW)[0]
        dets.append((lb.to_original(det.boxes), det.scores, det.labels))
        gts.append((s.boxes, s.labels, s.ignore | ~holds))
        det = default(torch.from_numpy(t["cov"])[None], torch.from_numpy(t["bbox"])[None], HW)[0]
        cut.append(image_record(det, lb, s.boxes, s.labels, s.ignore | ~holds, default.min_height))
    assert padded == len(samples) == 19 and counted == 748  # 831 faces less 80 invalid, 3 under 4 px
    assert held / counted > 0.97  # crowds of tiny faces: a few share every cell with a nearer face (20 of 748)
    curve = per_class_ap(dets, gts, 1, 0.5, "all")[0]
    assert curve.ap == pytest.approx(1.0)
    curve = per_class_ap([d for d, _ in cut], [g for _, g in cut], 1, 0.5, "all")[0]
    assert curve.ap == pytest.approx(1.0) and curve.num_gt < held  # faces of 4-6.8 px no longer count


@pytest.mark.slow
def test_widerface_layout_at_736x416_trains_through_the_real_parser(tmp_path):
    """Synthetic faces written in WIDER FACE's official layout (events, bbx_gt.txt with invalid flags, tiny
    faces), trained through dataset=widerface, its parser and the letterbox at 736x416: the losses fall
    (~30 s an epoch here)."""
    spec = {"width": 800, "height": 600, "min_faces": 1, "max_faces": 3, "min_face": 3.0, "small_face": 60.0,
            "small_fraction": 0.15, "max_face_frac": 0.45}
    root = generate_widerface(tmp_path / "wider", {"train": SyntheticSpec(num_images=20, seed=0, **spec),
                                                   "val": SyntheticSpec(num_images=8, seed=1, **spec)})
    train = read_widerface_txt(root / "wider_face_split" / "wider_face_train_bbx_gt.txt",
                               root / "WIDER_train" / "images", min_size=4.0)
    ignored = np.concatenate([s.ignore for s in train])
    assert 0 < ignored.sum() < len(ignored)  # invalid and tiny faces became ignore boxes
    from gridface.train import run

    cfg = compose_train(tmp_path, ["dataset=widerface", f"dataset.root={root}", "recipe=synthetic_cpu",
                                   "dataset.batch_size=4", "dataset.num_workers=0", "trainer.max_epochs=3",
                                   "trainer.num_sanity_val_steps=0", "print_config=false",
                                   "postprocess.minimum_bounding_box_height=0"])
    assert (cfg.dataset.input_width, cfg.dataset.input_height) == (736, 416)
    run(cfg)
    metrics = tmp_path / "out" / "csv" / "metrics.csv"
    cov = logged_per_epoch(metrics, "train/loss_cov_epoch")
    val = logged_per_epoch(metrics, "val/loss")
    ap = logged_per_epoch(metrics, "val/AP50")
    # AP50 this early is a few hundredths or 0 and moves between runs and CPUs: the losses show that it learned
    # (test_real_faces_flow_through_training_at_736x416 and the pruning test check AP on a longer run). The
    # validation loss is not monotonic under the recipe's one-cycle schedule: the first epoch's can be low while
    # the head still predicts background everywhere (0.012, 0.83, 0.12 in one run; 0.43, ..., 0.006 in another),
    # and it rises at the learning-rate peak; it falls again as the rate anneals.
    seen = f"train cov loss {cov}, val loss {val}, val/AP50 {ap}"
    assert len(cov) == len(val) == len(ap) == 3, seen
    assert all(np.isfinite([*cov, *val])), seen
    assert cov[2] < cov[0] and val[2] < val[1], seen
    assert all(0.0 <= a <= 1.0 for a in ap), seen


@pytest.mark.slow
def test_real_faces_flow_through_training_at_736x416(tmp_path, shared_data):
    """The 19 real mini_val images through experiment=overfit_mini_val for 2 epochs (about a minute here):
    their invalid and small faces reach the loss as ignore regions, the coverage loss on these real pixels
    falls from the first epoch to the second, and validation reports AP50 and the official easy/medium/hard.
    (Reaching AP50 0.5 takes far longer than a test on this CPU: experiments/real_data_2026-11-24/README.md has
    the curve.)"""
    from gridface.train import build

    cfg = compose_train(tmp_path, ["experiment=overfit_mini_val", f"paths.shared_data={shared_data}",
                                   "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2", "print_config=false"])
    module, datamodule, trainer = build(cfg)
    datamodule.setup("fit")
    first = collate([datamodule.train_set[i] for i in range(len(datamodule.train_set))])
    assert first["image"].shape == (19, 3, 416, 736) and first["ignore"].sum() > 100  # real ignore cells
    trainer.fit(module, datamodule=datamodule)
    cov = logged_per_epoch(tmp_path / "out" / "csv" / "metrics.csv", "train/loss_cov_epoch")
    assert len(cov) == 2 and cov[1] < cov[0], f"coverage loss per epoch: {cov}"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"val/AP50", "val/wider_easy", "val/wider_medium", "val/wider_hard"} <= set(metrics)
