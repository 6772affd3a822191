"""gridface.evaluate through its Hydra config: predictions mode and model mode."""

import json
from pathlib import Path

import pytest

from gridface.evaluate import run
from gridface.evaluation.widerface import evaluate_predictions, load_ground_truth, load_predictions
from gridface.train import run as train_run

from .helpers import TINY, compose_config, compose_train


def compose_eval(tmp_path, overrides):
    return compose_config("evaluate", tmp_path / "eval", tmp_path / "cache", overrides)


def test_predictions_mode_reproduces_official_mini_val(tmp_path, shared_data):
    w = shared_data / "widerface"
    cfg = compose_eval(tmp_path, [f"predictions={w / 'preds_yolov7face'}", f"gt={w / 'mini_val' / 'ground_truth'}"])
    result = run(cfg)
    assert result["metrics"]["wider_easy"] == pytest.approx(0.9225273450313023, abs=1e-6)
    assert result["metrics"]["wider_hard"] == pytest.approx(0.9008606815237921, abs=1e-6)
    out = tmp_path / "eval"
    assert (out / "pr_wider.png").stat().st_size > 1000
    md = (out / "metrics.md").read_text()
    assert "wider_medium" in md and "Recall by face height" in md
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    assert saved["wider_medium"] == pytest.approx(0.9075044520819315)


def test_predictions_mode_needs_gt(tmp_path):
    with pytest.raises(ValueError, match="gt="):
        run(compose_eval(tmp_path, [f"predictions={tmp_path}"]))


@pytest.fixture(scope="module")
def tiny_checkpoint(module_tmp):
    tmp = module_tmp("ckpt")
    cfg = compose_train(tmp, [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                              "trainer.limit_val_batches=1", "logger=none"])
    result = train_run(cfg)
    tmp.joinpath("train_metrics.json").write_text(json.dumps(sorted(result["metrics"])))
    return Path(result["last_checkpoint"]), tmp


@pytest.mark.slow
def test_model_mode_on_synthetic(tmp_path, tiny_checkpoint):
    ckpt, tmp = tiny_checkpoint
    # no dataset=: the validation split the checkpoint was trained with
    cfg = compose_eval(tmp_path, [f"model={ckpt}", "num_workers=0", "postprocess.clustering=nms"])
    result = run(cfg)
    assert result["images"] == 8 and "trained on" in result["data_from"]
    assert result["postprocess"]["clustering"] == "nms"
    # the names training logs (as val/<name>) are the names evaluation reports
    assert set(result["metrics"]) == {"AP50", "AP50_face", "mAP", "AR"}
    trained = set(json.loads((tmp / "train_metrics.json").read_text()))
    assert {f"val/{name}" for name in result["metrics"]} <= trained
    assert (tmp_path / "eval" / "pr_ap50.png").is_file()


def test_evaluation_refuses_data_it_cannot_measure_and_records_its_iou(tmp_path, tiny_checkpoint):
    """Dataset classes other than the model's (scored by position, they were reported as the model's), or no face of
    the model's classes in the split (AP 0 and NaN, exit 0): an error before predicting. Another IoU is recorded,
    and the report's title says the AP50 keys measured it."""
    ckpt, _ = tiny_checkpoint
    with pytest.raises(ValueError, match=r"detects \['face'\], the dataset's classes are \['person'\]"):
        run(compose_eval(tmp_path, [f"model={ckpt}", "num_workers=0", "dataset=synthetic",
                                    "dataset.class_names=[person]"]))
    with pytest.raises(ValueError, match="the val split lists 8 images but not one face box"):
        run(compose_eval(tmp_path, [f"model={ckpt}", "num_workers=0", "dataset=synthetic", "dataset.val.num_images=8",
                                    "dataset.faces_per_image=[0,0]"]))
    result = run(compose_eval(tmp_path, [f"model={ckpt}", "num_workers=0", "evaluation.iou=0.7"]))
    assert result["iou"] == 0.7
    assert "(detections matched at IoU 0.7, not 0.5)" in (tmp_path / "eval" / "metrics.md").read_text()


@pytest.mark.slow
def test_model_mode_on_wider_mini_val_writes_submission(tmp_path, tiny_checkpoint, shared_data):
    ckpt, _ = tiny_checkpoint
    mini = shared_data / "widerface" / "mini_val"
    cfg = compose_eval(tmp_path, [f"model={ckpt}", "dataset=widerface", "num_workers=0",
                                  f"dataset.val.gt_file={mini / 'wider_face_val_bbx_gt.txt'}",
                                  f"dataset.val.image_dir={mini / 'images'}",
                                  f"gt={mini / 'ground_truth'}", "write_predictions=true",
                                  "postprocess.clustering=nms"])
    result = run(cfg)
    assert result["images"] == 19
    assert {"wider_easy", "wider_medium", "wider_hard"} <= set(result["metrics"])
    # The written submission evaluates to the same AP as the run itself.
    preds = load_predictions(tmp_path / "eval" / "predictions")
    assert len(preds) == 19
    again = evaluate_predictions(preds, load_ground_truth(mini / "ground_truth"))
    assert again["hard"].ap == pytest.approx(result["metrics"]["wider_hard"], abs=1e-3)


def test_metrics_json_is_strict_json_with_null_for_an_undefined_metric(tmp_path):
    # AP of a setting without faces is NaN; Python's json would write a bare NaN that jq and browsers refuse
    import numpy as np

    from gridface.evaluation.report import write_report

    write_report(tmp_path, "t", {"wider_easy": 0.5, "wider_hard": float("nan")},
                 {"images": np.int64(3), "score": np.float32(0.25), "worst": float("-inf")})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert saved["metrics"] == {"wider_easy": 0.5, "wider_hard": None}
    assert saved["images"] == 3 and saved["score"] == 0.25 and saved["worst"] is None


def test_output_dir_puts_the_report_where_the_user_says(tmp_path, shared_data):
    w = shared_data / "widerface"
    cfg = compose_eval(tmp_path, [f"predictions={w / 'preds_yolov7face'}", f"gt={w / 'mini_val' / 'ground_truth'}",
                                  f"output_dir={tmp_path / 'mine'}", "plots=false"])
    run(cfg)
    assert json.loads((tmp_path / "mine" / "metrics.json").read_text())["metrics"]["wider_easy"] > 0.9
    assert (tmp_path / "mine" / "metrics.md").is_file() and not (tmp_path / "eval" / "metrics.json").exists()
