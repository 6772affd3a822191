"""Inference: Detector API on path/array/PIL, each source type, each output format parsed back."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gridface import Detector
from gridface.evaluation.widerface import load_predictions
from gridface.infer import run as infer_run
from gridface.inference.sources import Source
from gridface.train import run as train_run

from .helpers import TINY, compose_train, write_mjpeg_avi


@pytest.fixture(scope="module")
def model(module_tmp):
    tmp = module_tmp("m")
    cfg = compose_train(tmp, [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                              "trainer.limit_val_batches=1", "logger=none"])
    ckpt = train_run(cfg)["last_checkpoint"]
    # A permissive threshold so an untrained model still returns boxes to compare.
    return Detector.load(ckpt, clustering="nms", coverage_threshold=0.0), ckpt, tmp


def test_path_array_and_pil_give_the_same_boxes(tmp_path, model):
    det, _, _ = model
    rgb = np.random.default_rng(0).integers(0, 255, (300, 500, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    a = det(tmp_path / "a.png")
    b = det(rgb)
    c = det(Image.fromarray(rgb))
    d = det(rgb[..., ::-1], color="BGR")
    for other in (b, c, d):
        np.testing.assert_allclose(a.boxes, other.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, other.scores, atol=1e-5)
    assert len(a) > 0


def test_boxes_are_in_original_coordinates(model):
    det, _, _ = model
    rgb = np.random.default_rng(1).integers(0, 255, (700, 1024, 3), np.uint8)
    out = det(rgb)
    assert len(out) and out.boxes[:, [0, 2]].max() <= 1024 and out.boxes[:, [1, 3]].max() <= 700
    assert out.boxes[:, [0, 2]].max() > 256  # beyond the 192x128 network input: mapped back


def test_batch_call_equals_single_calls(model):
    det, _, _ = model
    imgs = [np.random.default_rng(i).integers(0, 255, (200 + 40 * i, 300, 3), np.uint8) for i in range(3)]
    batch = det(imgs)
    for img, res in zip(imgs, batch, strict=True):
        np.testing.assert_allclose(det(img).boxes, res.boxes, atol=1e-4)


def test_bad_inputs_are_clear(tmp_path, model):
    det, _, _ = model
    with pytest.raises(ValueError, match="missing.jpg: missing"):
        det(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="HxWx3"):
        det(np.zeros((4, 4, 4, 4), np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        Source(str(empty))
    with pytest.raises(FileNotFoundError, match="source not found"):
        Source(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported source type"):
        Source(str(tmp_path / "x.txt"))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open video"):
        Source(str(tmp_path / "broken.mp4"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["device=gpu"], "device = 'gpu': must be cpu, cuda or cuda:<index>"),
    (["batch_size=0"], "batch_size = 0: must be a whole number >= 1"),
    (["read_workers=0"], "read_workers = 0: must be a whole number >= 1"),
    (["device=cuda:99"], "device = 'cuda:99': (no CUDA device is visible here|this machine has)"),
    (["frame_stride=1.5"], r"frame_stride = 1.5: must be a whole number >= 1"),  # each frame, silently
    (["frame_stride=0"], r"frame_stride = 0: must be a whole number >= 1"),
    (["max_frames=-1"], r"max_frames = -1: must be a whole number >= 0"),  # one frame, silently
])
def test_infer_settings_out_of_range_name_the_key(tmp_path, model, overrides, message):
    from gridface.utils.validate import ConfigError

    (tmp_path / "a.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes())
    with pytest.raises(ConfigError, match=message):
        infer_run(infer_cfg(tmp_path, model, tmp_path / "a.jpg", overrides))


def test_a_source_where_no_image_could_be_read_is_an_error_after_its_summary(tmp_path, model):
    """One truncated image named as the source: it used to print '0 images (1 skipped)' and exit 0."""
    data = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"none of its 1 images could be read: 1 truncated; .*summary.json lists"):
        infer_run(infer_cfg(tmp_path, model, tmp_path / "cut.jpg"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 0 and summary["skipped_by_kind"] == {"truncated": 1}


def infer_cfg(tmp_path, model, source, extra=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from gridface.utils.hydra import config_dir

    _, ckpt, _ = model
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("infer", overrides=[f"model={ckpt}", f"source={source}", "postprocess.clustering=nms",
                                          "postprocess.coverage_threshold=0.0", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


@pytest.mark.slow
def test_folder_outputs_parse_back_and_bad_file_is_skipped(tmp_path, model):
    src = tmp_path / "imgs" / "0--Parade"
    src.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(src / f"img_{i}.jpg"), np.random.default_rng(i).integers(0, 255, (240, 320, 3), np.uint8))
    (src / "bad.jpg").write_bytes(b"garbage")
    (src / "moved.jpg").symlink_to(tmp_path / "no_longer_here.jpg")  # a dangling link was dropped silently
    summary = infer_run(infer_cfg(tmp_path, model, tmp_path / "imgs", ["save_wider=true"]))
    out = tmp_path / "out"
    assert summary["frames"] == 3 and summary["skipped"] == 2
    assert summary["skipped_by_kind"] == {"not an image": 1, "missing": 1}
    assert [Path(f.split(":")[0]).name for f in sorted(summary["skipped_files"])] == ["bad.jpg", "moved.jpg"]
    assert len(list((out / "images" / "0--Parade").glob("*.jpg"))) == 3
    coco = json.loads((out / "detections.json").read_text())
    labels = {p.relative_to(out / "labels").with_suffix("").as_posix(): p.read_text().splitlines()
              for p in (out / "labels").rglob("*.txt")}
    assert set(labels) == {"0--Parade/img_0", "0--Parade/img_1", "0--Parade/img_2"}
    n_kitti = sum(len(v) for v in labels.values())
    assert n_kitti == len(coco) == summary["faces"] > 0
    first = labels["0--Parade/img_0"][0].split()
    assert first[0] == "face" and len(first) == 16
    wider = load_predictions(out / "wider")
    assert sum(len(v) for v in wider.values()) == len(coco)


def test_a_rerun_into_the_same_output_dir_replaces_the_earlier_results(tmp_path, model, caplog, monkeypatch):
    """A folder run, then one image into the same output_dir=: labels/ kept the folder run's files beside the new
    one. A rerun stopped by Ctrl-C left the earlier summary.json, which still claimed a finished run."""
    import logging

    from gridface.inference.writers import OutputWriter

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"img_{i}.jpg"), np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8))
    out = tmp_path / "out"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("mine")  # not a run's output: kept
    assert infer_run(infer_cfg(tmp_path, model, src))["frames"] == 3
    with caplog.at_level(logging.WARNING, logger="gridface.stages.infer"):
        summary = infer_run(infer_cfg(tmp_path, model, src / "img_1.jpg"))
    assert f"output_dir={out} held the results of an earlier run (source={src})" in caplog.text
    assert summary["frames"] == 1 and summary["complete"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["img_1.txt"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img_1.jpg"]
    assert len(json.loads((out / "detections.json").read_text())) == summary["faces"]

    real_add = OutputWriter.add

    def interrupted(self, image, det, name, index, path):
        if index >= 1:
            raise KeyboardInterrupt
        real_add(self, image, det, name, index, path)

    monkeypatch.setattr(OutputWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        infer_run(infer_cfg(tmp_path, model, src, ["batch_size=1"]))
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["complete"] is False and stopped["source"] == str(src) and "frames" not in stopped
    assert not (out / "detections.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["img_0.txt"]


@pytest.mark.slow
def test_video_round_trip_keeps_frames_fps_and_size(tmp_path, model):
    path = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (320, 240))
    for i in range(10):
        frame = np.full((240, 320, 3), 40 * (i % 5), np.uint8)
        cv2.circle(frame, (100 + 10 * i, 120), 40, (180, 200, 230), -1)
        vw.write(frame)
    vw.release()
    summary = infer_run(infer_cfg(tmp_path, model, path))
    assert summary["frames"] == 10
    cap = cv2.VideoCapture(summary["video"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (320, 240)
    ok, first = cap.read()
    cap.release()
    assert ok
    # boxes were drawn in pure green where the model found faces
    green = (first[..., 1] > 200) & (first[..., 0] < 80) & (first[..., 2] < 80)
    assert green.any() == (summary["faces"] > 0)
    assert Path(summary["output_dir"]).is_dir()
    assert sorted(p.name for p in Path(summary["output_dir"]).glob("*.mp4")) == ["clip_annotated.mp4"]


def test_an_interrupted_video_run_keeps_a_playable_partial_video_and_no_final_one(tmp_path, model, monkeypatch,
                                                                                  capsys):
    """Ctrl-C after 4 frames: the frames annotated so far are a closed, playable clip_annotated.partial.mp4; nothing
    sits under the final name (a killed run used to leave an unplayable clip_annotated.mp4); one line, exit 130."""
    from gridface.inference.writers import OutputWriter
    from gridface.stages.infer import run as stage_run
    from gridface.utils.errors import user_errors

    path = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 120))
    for i in range(12):
        vw.write(np.full((120, 160, 3), 20 * i, np.uint8))
    vw.release()
    real_add, added = OutputWriter.add, []

    def add(self, *args, **kwargs):
        if len(added) == 4:
            raise KeyboardInterrupt
        added.append(1)
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(OutputWriter, "add", add)
    with pytest.raises(SystemExit) as e:
        user_errors("infer")(stage_run)(infer_cfg(tmp_path, model, path, ["batch_size=2", "model_workers=1"]))
    assert e.value.code == 130 and capsys.readouterr().err.strip().endswith("gridface.infer: interrupted")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == ["clip_annotated.partial.mp4"]
    cap = cv2.VideoCapture(str(out / "clip_annotated.partial.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and cap.read()[0]
    cap.release()


def test_a_rerun_removes_every_file_an_earlier_runs_video_left(tmp_path):
    """A Ctrl-C'd run's clip_annotated.partial.mp4 and a killed run's hidden .clip_annotated.partial.mp4 stayed
    beside a rerun's results, as did the video of a run whose output_dir= was written relative to another folder."""
    from gridface.inference.writers import replace_previous_run

    out = tmp_path / "out"
    out.mkdir()
    left = ["clip_annotated.mp4", "clip_annotated.partial.mp4", ".clip_annotated.partial.mp4"]
    for name in [*left, "mine.mp4", "other_annotated.mp4"]:
        (out / name).write_bytes(b"x")
    (out / "summary.json").write_text(json.dumps({"source": "clip.mp4", "output_dir": "out", "complete": False,
                                                  "video": "elsewhere/out/clip_annotated.partial.mp4"}))
    assert replace_previous_run(out) == "clip.mp4"
    assert sorted(p.name for p in out.iterdir()) == ["mine.mp4", "other_annotated.mp4"]


def test_an_interrupted_video_runs_partial_video_goes_with_the_next_run(tmp_path, model, monkeypatch):
    """After a Ctrl-C'd video run, a rerun into the same output_dir= said the earlier results were replaced and
    left the partial video there: the stopped run's summary named no video."""
    from gridface.inference.writers import OutputWriter

    clip = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 120))
    for i in range(8):
        vw.write(np.full((120, 160, 3), 20 * i, np.uint8))
    vw.release()
    real_add = OutputWriter.add

    def add(self, image, det, name, index, path):
        if index == 3:
            raise KeyboardInterrupt
        real_add(self, image, det, name, index, path)

    monkeypatch.setattr(OutputWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        infer_run(infer_cfg(tmp_path, model, clip, ["batch_size=1", "model_workers=1"]))
    out = tmp_path / "out"
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["complete"] is False and stopped["video"] == str(out / "clip_annotated.partial.mp4")
    monkeypatch.setattr(OutputWriter, "add", real_add)
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((60, 80, 3), 90, np.uint8))
    assert infer_run(infer_cfg(tmp_path, model, tmp_path / "a.jpg"))["frames"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "images", "labels", "summary.json"]


def test_a_video_with_no_readable_frame_is_an_error_after_its_summary(tmp_path, model):
    """An AVI cut right after its header printed '0 frames (0 skipped ...)', exited 0 and said complete."""
    frames = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8) for i in range(6)]
    data = write_mjpeg_avi(tmp_path / "cut.avi", frames, 10).read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: data.index(b"movi") + 40])
    with pytest.raises(ValueError, match=r"cut.avi: no frame could be read from the video; the video ended 6 frames "
                                         r"before its header's count"):
        infer_run(infer_cfg(tmp_path, model, tmp_path / "cut.avi"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 0 and summary["video_frames_missing"] == 6 and summary["video"] is None


def test_an_odd_sized_video_with_a_clock_rate_for_fps_keeps_every_pixel(tmp_path, model, caplog):
    """161x121 frames at a header rate of 120,000 (a clock rate, as RTSP's 90,000): the video encoder refused the
    rate (a traceback blaming a missing encoder), and it cropped an odd side's last column or row silently."""
    import logging

    frames = []
    for i in range(5):
        frame = np.full((121, 161, 3), 60 + 10 * i, np.uint8)
        frame[:, -1] = frame[-1, :] = 230  # the column and row an odd side loses
        frames.append(frame)
    clip = write_mjpeg_avi(tmp_path / "odd.avi", frames, 120000)
    with caplog.at_level(logging.WARNING):
        summary = infer_run(infer_cfg(tmp_path, model, clip, ["postprocess.coverage_threshold=1.0"]))
    assert "reports 120000 frames per second: the annotated video is written at 25" in caplog.text
    assert "the frames are 161x121, the video 162x122" in caplog.text
    assert summary["frames"] == 5 and summary["faces"] == 0
    cap = cv2.VideoCapture(summary["video"])
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (122, 162, 3)
    assert abs(first[2:-2, 160].mean() - 230) < 12 and abs(first[120, 2:-2].mean() - 230) < 12  # kept
    assert first[:, 161].mean() < 25 and first[121, :].mean() < 25  # the added black column and row


def test_a_camera_run_ended_by_ctrl_c_writes_and_counts_every_frame_it_read(tmp_path, model, monkeypatch):
    """Ctrl-C ends a camera run: the frames still in a batch or in the model were neither written nor counted in
    faces, yet counted in frames (32 frames written of 48 counted)."""
    clip = tmp_path / "camera.mp4"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for i in range(16):
        frame = np.full((120, 160, 3), 40, np.uint8)
        cv2.circle(frame, (40 + 5 * i, 60), 30, (180, 200, 230), -1)
        vw.write(frame)
    vw.release()
    capture = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda spec, *a: capture(str(clip) if spec == 0 else spec, *a))
    frames_of = Source.__iter__

    def ctrl_c_after_11(self):
        for frame in frames_of(self):
            if frame.index == 11:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(Source, "__iter__", ctrl_c_after_11)
    summary = infer_run(infer_cfg(tmp_path, model, 0, ["batch_size=4", "model_workers=2"]))
    out = tmp_path / "out"
    assert summary["complete"] and summary["frames"] == 11 and summary["kind"] == "camera"
    assert len(list((out / "labels").glob("*.txt"))) == 11
    assert len(json.loads((out / "detections.json").read_text())) == summary["faces"]
    cap = cv2.VideoCapture(summary["video"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 11
    cap.release()


def test_a_stream_url_is_read_until_it_ends_and_one_that_cannot_open_is_one_line(tmp_path, model):
    """source=rtsp://... (or any URL OpenCV's FFmpeg opens) was 'source not found: rtsp:/...' (a path)."""
    from gridface.inference.sources import stream_name

    assert stream_name("rtsp://user:secret@cam1:8554/live") == "cam1_8554_live"
    clip = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for i in range(6):
        vw.write(np.full((120, 160, 3), 30 * i, np.uint8))
    vw.release()
    summary = infer_run(infer_cfg(tmp_path, model, f"file://{clip}"))
    assert summary["kind"] == "stream" and summary["complete"] and summary["frames"] == 6
    assert Path(summary["video"]).name == f"{stream_name(f'file://{clip}')}_annotated.mp4"
    with pytest.raises(ValueError, match=r"cannot open stream rtsp://127.0.0.1:9/live"):
        infer_run(infer_cfg(tmp_path / "refused", model, "rtsp://127.0.0.1:9/live"))


@pytest.mark.slow
def test_sigterm_stops_a_video_run_as_ctrl_c_does(tmp_path, model):
    """SIGTERM (timeout, docker stop, systemd) killed the run at once: an unplayable hidden .partial.mp4, which no
    later run removed. Now: exit 143, one line, the frames so far in a playable clip_annotated.partial.mp4."""
    import os
    import signal
    import subprocess
    import sys
    import time

    clip = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (96, 64))
    for i in range(3000):
        vw.write(np.full((64, 96, 3), i % 250, np.uint8))
    vw.release()
    out = tmp_path / "out"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    log = tmp_path / "infer.log"  # a file, not a pipe: the progress bar would fill an unread pipe and stall the run
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gridface.infer", f"model={model[1]}", f"source={clip}",
                                 f"output_dir={out}", "batch_size=1", "model_workers=1",
                                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while not (out / "labels" / "frame_000005.txt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no frame written in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == 143 and err.strip().endswith("gridface.infer: terminated"), err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["video"] == str(out / "clip_annotated.partial.mp4")
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip_annotated.partial.mp4"]
    assert not (out / ".clip_annotated.partial.mp4").exists()
    cap = cv2.VideoCapture(summary["video"])
    assert 5 < int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) < 3000 and cap.read()[0]
    cap.release()


def test_a_folder_named_with_digits_is_a_folder_and_a_glob_names_what_it_leaves_out(tmp_path, monkeypatch, caplog):
    """source=2024 (a folder of photos) was opened as camera 2024; a glob that matched a video left it out
    silently, and one that matched only videos said 'no images match'."""
    import logging

    (tmp_path / "2024").mkdir()
    cv2.imwrite(str(tmp_path / "2024" / "a.jpg"), np.full((40, 50, 3), 90, np.uint8))
    (tmp_path / "2024" / "clip.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert Source("2024").kind == "images" and Source(2024).kind == "images" and Source("7").kind == "camera"
    with caplog.at_level(logging.WARNING, logger="gridface.inference.sources"):
        assert [f.name for f in Source("2024/*")] == ["a"]
    assert "1 files left out, not images gridface reads (.mp4): clip.mp4" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"no images match '2024/\*.mp4' \(it matches 1 video\(s\), e.g. "
                                                r"2024/clip.mp4: a glob reads images; give a video as source=<file>"):
        Source("2024/*.mp4")


def test_single_image_and_glob_sources(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.jpg"), np.full((50, 60, 3), 30 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    one = Source(str(tmp_path / "f1.jpg"))
    assert one.kind == "images" and [f.name for f in one] == ["f1"]
    frames = list(Source(str(tmp_path / "f*.jpg")))
    assert [f.name for f in frames] == ["f0", "f1", "f2"] and all(f.image.shape == (50, 60, 3) for f in frames)
    with pytest.raises(FileNotFoundError, match="no images match"):
        Source(str(tmp_path / "*.png"))


def test_video_frame_stride(tmp_path):
    path = tmp_path / "c.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(9):
        vw.write(np.full((48, 64, 3), 20 * i, np.uint8))
    vw.release()
    src = Source(str(path), frame_stride=3)
    assert src.kind == "video" and src.size == (64, 48)
    assert [f.index for f in src] == [0, 3, 6]


@pytest.mark.slow
def test_without_source_runs_on_the_models_validation_images(tmp_path, model):
    summary = infer_run(infer_cfg(tmp_path, model, "null", ["save_images=false"]))
    assert summary["frames"] == 8 and summary["skipped"] == 0  # TINY's 8 validation images
    assert summary["source"].endswith("images") and len(list((tmp_path / "out" / "labels").glob("*.txt"))) == 8


def test_exif_rotated_photo_gives_the_same_boxes_as_path_pil_or_array(tmp_path, model):
    """The file says 'rotate 90°' in EXIF: the path (OpenCV), PIL (exif_transpose) and an array the user read with
    OpenCV must all be the upright picture, so all three find the same boxes."""
    det, _, _ = model
    rgb = np.random.default_rng(3).integers(0, 255, (200, 360, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    a = det(path)
    b = det(Image.open(path))
    c = det(cv2.imread(str(path)), color="BGR")
    assert det.to_rgb(path).shape == (360, 200, 3)  # upright: EXIF applied
    for other in (b, c):
        np.testing.assert_allclose(a.boxes, other.boxes, atol=1e-3)
    assert len(a) > 0 and a.boxes[:, [1, 3]].max() > 200  # boxes live in the upright (360 px high) picture


def test_16_bit_and_float_arrays_are_scaled_not_clipped(tmp_path, model):
    det, _, _ = model
    rgb16 = np.random.default_rng(4).integers(0, 65535, (120, 200, 3), np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb16[..., ::-1])
    from_file = det.to_rgb(tmp_path / "deep.png")
    np.testing.assert_array_equal(det.to_rgb(rgb16), from_file)
    np.testing.assert_allclose(det(rgb16).boxes, det(tmp_path / "deep.png").boxes, atol=1e-4)
    as_float = from_file.astype(np.float32) / 255
    np.testing.assert_array_equal(det.to_rgb(as_float), from_file)


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.zeros((3, 64, 64), np.uint8), "channels-first"), (np.zeros((64, 64, 2), np.uint8), "HxWx3"),
     (np.full((8, 8, 3), 200.0, np.float32), r"float image arrays must be in \[0, 1\]"),
     (np.full((8, 8, 3), np.nan, np.float32), "NaN"), (np.full((8, 8, 3), 300, np.int32), "0-255")],
)
def test_wrong_arrays_are_clear_errors(model, array, message):
    det, _, _ = model
    with pytest.raises(ValueError, match=message):
        det(array)


def test_same_named_files_in_sub_folders_keep_apart(tmp_path, model):
    for sub, seed in (("a", 0), ("b/c", 1)):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "imgs" / sub / "photo.jpg"),
                    np.random.default_rng(seed).integers(0, 255, (120, 160, 3), np.uint8))
    summary = infer_run(infer_cfg(tmp_path, model, tmp_path / "imgs"))
    out = tmp_path / "out"
    assert summary["frames"] == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("photo.*")) == [
        "images/a/photo.jpg", "images/b/c/photo.jpg", "labels/a/photo.txt", "labels/b/c/photo.txt"]


def test_files_differing_only_in_suffix_keep_apart_and_other_files_are_named(tmp_path, model, caplog):
    """photo.jpg and photo.png in one folder each keep their outputs (the second used to overwrite the first's
    annotated image and labels); a .gif and a .mov in the folder are named in a warning, not dropped silently; two
    images the WIDER layout would write to one file stop save_wider=true before any work."""
    src = tmp_path / "imgs"
    src.mkdir()
    for suffix, seed in ((".jpg", 0), (".png", 1)):
        cv2.imwrite(str(src / f"photo{suffix}"), np.random.default_rng(seed).integers(0, 255, (120, 160, 3), np.uint8))
    (src / "clip.mov").write_bytes(b"not read")
    (src / "anim.gif").write_bytes(b"GIF89a")
    with caplog.at_level("WARNING", logger="gridface.inference.sources"):
        summary = infer_run(infer_cfg(tmp_path, model, src))
    out = tmp_path / "out"
    assert summary["frames"] == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("photo.*")) == [
        "images/photo.jpg.jpg", "images/photo.png.jpg", "labels/photo.jpg.txt", "labels/photo.png.txt"]
    assert "2 files left out, not images gridface reads (.gif, .mov): anim.gif, clip.mov" in caplog.text
    for sub, seed in (("a/x", 0), ("b/x", 1)):
        (tmp_path / "w" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "w" / sub / "p.jpg"), np.random.default_rng(seed).integers(0, 255, (60, 80, 3),
                                                                                               np.uint8))
    with pytest.raises(ValueError, match=r"save_wider=true: .*a/x/p.jpg and .*b/x/p.jpg would both write wider/x/p"):
        infer_run(infer_cfg(tmp_path / "w_out", model, tmp_path / "w", ["save_wider=true"]))


def test_truncated_video_is_reported_and_a_headerless_one_is_an_error(tmp_path, model):
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(12):
        vw.write(np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8))
    vw.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    summary = infer_run(infer_cfg(tmp_path, model, path))
    assert 0 < summary["frames"] < 12 and summary["video_frames_missing"] == 12 - summary["frames"]
    mp4 = tmp_path / "cut.mp4"  # an MP4 cut before its index (moov at the end) cannot be opened at all
    vw = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for i in range(5):
        vw.write(np.full((120, 160, 3), 30 * i, np.uint8))
    vw.release()
    mp4.write_bytes(mp4.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot open video .*cut.mp4"):
        Source(str(mp4))


@pytest.fixture(scope="module")
def onnx_model(model):
    """The module's checkpoint exported to ONNX (with its metadata), as a deployment runs it."""
    from gridface.stages.export import run as export_run

    from .helpers import compose_config

    _, ckpt, tmp = model
    cfg = compose_config("export", tmp / "export", tmp / "cache", [f"model={ckpt}", "export=onnx",
                                                                   "export.verify_images=2"])
    return export_run(cfg)["onnx"]


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_infer_gives_the_detectors_boxes_and_keeps_the_colours(tmp_path, model, onnx_model, kind):
    """gridface.infer keeps frames BGR as OpenCV decodes them, fills each batch itself and (ONNX) runs two batches
    side by side: the boxes of each image are still the Detector's on the same file, in order, at batch 1 and 3,
    and the annotated image keeps its colours."""
    path = model[1] if kind == "checkpoint" else onnx_model
    det = Detector.load(path, clustering="nms", coverage_threshold=0.0)
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        bgr = np.zeros((240, 320, 3), np.uint8)
        bgr[:, :160, 2] = 230  # red on the left
        bgr[:, 160:, 0] = 230  # blue on the right
        bgr[rng.integers(0, 240, 300), rng.integers(0, 320, 300)] = 255
        cv2.imwrite(str(src / f"{i}.jpg"), bgr)
    for batch in (1, 3):
        out = tmp_path / f"out{batch}"
        cfg = infer_cfg(tmp_path, (None, path, None), src, [f"batch_size={batch}", "model_workers=2"])
        cfg.paths.output_dir = str(out)
        summary = infer_run(cfg)
        assert summary["frames"] == 5 and summary["faces"] > 0
        coco = json.loads((out / "detections.json").read_text())
        assert [c["image_id"] for c in coco] == sorted(c["image_id"] for c in coco)  # written in order
        for i in range(5):
            rows = [line.split() for line in (out / "labels" / f"{i}.txt").read_text().splitlines()]
            expected = det(src / f"{i}.jpg")
            np.testing.assert_allclose(np.array([r[4:8] for r in rows], float), expected.boxes, atol=0.011)
        annotated = cv2.imread(str(out / "images" / "0.jpg"))
        left, right = np.median(annotated[:, :150], (0, 1)), np.median(annotated[:, 170:], (0, 1))
        assert left[2] > 150 > left[0] and right[0] > 150 > right[2]  # BGR: red stays red, blue stays blue


def test_an_onnx_model_with_a_fixed_batch_size_runs_and_quantizes_in_batches_of_it(tmp_path, onnx_model):
    """A static export (batch 1, as TensorRT or DLA builds often take) passed the contract check, then ONNX Runtime
    stopped inference and INT8 calibration with 'Got: 4 Expected: 1'. It now runs in batches of its size."""
    import shutil

    import onnx

    from gridface.contract import metadata_path
    from gridface.export.quantize import quantize_int8

    model = onnx.load(onnx_model)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    static = tmp_path / "static.onnx"
    onnx.save(model, static)
    shutil.copy(metadata_path(onnx_model), metadata_path(static))
    images = []
    for i in range(5):
        images.append(tmp_path / f"p{i}.jpg")
        cv2.imwrite(str(images[-1]), np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8))
    dynamic, fixed = Detector.load(onnx_model), Detector.load(static)
    assert fixed.backend.fixed_batch == 1 and dynamic.backend.fixed_batch is None
    for want, got in zip(dynamic([str(p) for p in images]), fixed([str(p) for p in images]),
                         strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    stats: dict = {}
    int8 = quantize_int8(static, tmp_path / "static_int8.onnx", images, tuple(fixed.backend.input_hw),
                         batch_size=4, stats=stats)
    assert stats == {"images": 5, "skipped": 0} and int8.is_file()


def test_an_onnx_model_gridface_did_not_write_is_named_as_such(tmp_path, onnx_model):
    """Another tool's ONNX model (no gridface metadata inside, no sidecar): the error said only that the .json was
    not found."""
    import onnx

    model = onnx.load(onnx_model)
    del model.metadata_props[:]
    foreign = tmp_path / "random.onnx"
    onnx.save(model, foreign)
    with pytest.raises(FileNotFoundError, match=r"random.onnx: not a model gridface.export wrote, .* no gridface "
                                                r"metadata and random.onnx.json is not beside it"):
        Detector.load(foreign)
