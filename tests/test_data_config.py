"""The data travels with the model: stored at training time, inherited by the later stages, checked on arrival."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from gridface.data.config import calibration_images, stage_data_config, training_data_config

from .helpers import compose_train


def kitti_data(root: str) -> dict:
    src = lambda split: {"_target_": "gridface.data.sources.kitti", "_partial_": True,  # noqa: E731
                         "image_dir": f"{root}/{split}/images", "label_dir": f"{root}/{split}/labels"}
    return {"name": "kitti", "root": root, "train": src("train"), "val": src("val")}


def test_checkpoint_data_config_is_resolved_with_absolute_paths(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=kitti", "dataset.root=rel/faces"])
    data = training_data_config(cfg.dataset)
    assert data["name"] == "kitti" and data["class_names"] == ["face"] and data["input_width"] == 736
    assert Path(data["val"]["image_dir"]).is_absolute() and data["val"]["image_dir"].endswith("rel/faces/val/images")
    assert data["train"]["_target_"] == "gridface.data.sources.kitti"


def test_a_root_missing_here_names_the_key_and_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset\.val\.image_dir = '/nowhere/faces/val/images' \(from the "
                                                r"data m\.ckpt was trained on\).*dataset=kitti dataset\.root="):
        stage_data_config(None, kitti_data("/nowhere/faces"), "m.ckpt")
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "labels").mkdir()
    data, origin = stage_data_config(None, kitti_data(str(tmp_path)), "m.ckpt")  # only the val split is needed
    assert data["name"] == "kitti" and "m.ckpt" in origin
    with pytest.raises(FileNotFoundError, match=r"dataset\.train\.image_dir"):
        stage_data_config(None, kitti_data(str(tmp_path)), "m.ckpt", ("val", "train"))


def test_dataset_override_wins_and_old_checkpoints_ask_for_it(tmp_path):
    cfg = compose_train(tmp_path, [])
    data, origin = stage_data_config(cfg.dataset, kitti_data("/nowhere"), "m.ckpt")
    assert data["name"] == "synthetic" and origin == "dataset="
    with pytest.raises(ValueError, match="give dataset=<synthetic"):
        stage_data_config(None, None, "old.ckpt")


def test_calibration_draws_across_the_whole_training_split(tmp_path):
    folder = tmp_path / "imgs"
    for event in range(5):  # a sorted, event-grouped set (as WIDER FACE is): the first 8 are all one event
        (folder / f"{event}--E").mkdir(parents=True)
        for i in range(20):
            cv2.imwrite(str(folder / f"{event}--E" / f"{i:02d}.png"), np.zeros((4, 4, 3), np.uint8))
    images, record = calibration_images(None, 8, seed=0, folder=str(folder))
    assert len(images) == 8 and len({p.parent.name for p in images}) >= 3
    assert record == {"source": f"folder {folder}", "seed": 0, "drawn": 8, "from": 100}
    assert calibration_images(None, 8, seed=0, folder=str(folder))[0] == images  # seeded
    assert calibration_images(None, 8, seed=1, folder=str(folder))[0] != images
    assert len(calibration_images(None, 500, folder=str(folder))[0]) == 100
    with pytest.raises(FileNotFoundError, match="export.calibration.folder"):
        calibration_images(None, 8, folder=str(tmp_path / "none"))
