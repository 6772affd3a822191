"""The infer stage (``python -m gridface.infer model=<.ckpt | .onnx | engine> source=<image | folder | glob | video |
camera | stream URL>``)

Writes annotated images (or an annotated video, same frame rate and size), KITTI labels, detections as
COCO-results JSON and, with ``save_wider=true``, the WIDER submission layout; prints a summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from gridface.data.config import split_samples, stage_data_config
from gridface.inference.detector import Detector
from gridface.inference.sources import Source
from gridface.inference.writers import OutputWriter, replace_previous_run
from gridface.stages.checks import check_stage_config
from gridface.utils.errors import terminate_as_interrupt
from gridface.utils.hydra import overrides
from gridface.utils.io import write_json

log = logging.getLogger(__name__)


def default_source(detector: Detector, model: str) -> str:
    """No ``source=``: the folder holding the validation images of the data the model was trained on."""
    if not detector.backend.data:
        raise ValueError(f"give source=<image | folder | glob | video | camera>: {model} does not carry the data it "
                         "was trained on")
    data, origin = stage_data_config(None, detector.backend.data, model, ("val",))
    folder = os.path.commonpath([str(s.image.parent) for s in split_samples(data, "val")])
    log.info("no source= given: running on the validation images of %s (%s)", origin, folder)
    return folder


@contextlib.contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's own thread pool at ``n`` for the run (then as it was): the reader threads already decode and
    resize frames in parallel, and a pool per call beside them and the model only adds switching (measured: a
    2-core run at batch 1 went from 37 to 42 images/s with 1)."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def stop_early(writer: OutputWriter, started: dict[str, Any]) -> None:
    """A run stopped by Ctrl-C, SIGTERM or an error: the video written so far stays playable, under a .partial name
    its summary names (so a rerun into the folder removes it); an error while closing is logged, never raised over
    the one that stopped the run."""
    try:
        writer.close(complete=False)
    except Exception as e:  # noqa: BLE001
        log.warning("could not close the outputs: %s", e)
        return
    if writer.video_path is not None:
        write_json(writer.out / "summary.json", {**started, "video": str(writer.video_path)})
        log.warning("stopped early: the frames annotated so far are in %s", writer.video_path)


def check_wider_names(files: list[Path]) -> None:
    """The WIDER submission layout names a result file by event folder and image name only: two images that share
    both would write one file, the later over the earlier."""
    seen: dict[tuple[str, str], Path] = {}
    for f in files:
        key = (f.parent.name, f.stem)
        if key in seen:
            raise ValueError(f"save_wider=true: {seen[key]} and {f} would both write wider/{key[0]}/{key[1]}.txt (the "
                             "WIDER layout keys results by event folder and image name); run them apart or set "
                             "save_wider=false")
        seen[key] = f


def model_workers(cfg: DictConfig) -> tuple[int, int | None]:
    """Batches the model runs at once, and ONNX Runtime's threads for each (``threads``; by default the cores
    shared out). Several single-threaded runs side by side keep the cores busy where one run's threads would
    wait at each layer for the one the decoding threads held up."""
    workers = max(1, int(cfg.get("model_workers") or 1))
    threads = cfg.get("threads")
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    return workers, threads


def run(cfg: DictConfig) -> dict[str, Any]:
    with opencv_threads(int(cfg.get("opencv_threads") or 1)), terminate_as_interrupt():
        return run_frames(cfg)


def run_frames(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    if cfg.get("model") is None:
        raise ValueError("give model=<.ckpt | .onnx | engine> and source=<image | folder | glob | video | camera>")
    workers, threads = model_workers(cfg)
    detector = Detector.load(cfg.model, cfg.device, threads, spin=bool(cfg.get("spin", False)),
                             **overrides(cfg.postprocess))
    if workers > 1 and detector.backend.format != "onnx":
        log.info("model_workers=%d applies to ONNX models; %s runs one batch at a time", workers,
                 detector.backend.format)
        workers = 1
    spec = cfg.source if cfg.get("source") is not None else default_source(detector, cfg.model)
    # Three stages overlap: reader threads decode and letterbox, ``model_workers`` threads fill batches (CHW float)
    # and run the model, one writer thread decodes the maps into boxes and writes (in order, so a video stays in
    # order); this thread hands frames on.
    # Frames stay BGR, as OpenCV decodes, draws and encodes them: no full-size colour conversion either way.
    source = Source(spec, cfg.frame_stride, cfg.prefetch, cfg.read_workers, color="BGR",
                    prepare=lambda image: detector.prepare(image, "BGR"))
    if cfg.save_wider:
        check_wider_names(source.files)
        if source.kind != "images":
            log.warning("save_wider=true: the WIDER layout names results by event folder and image, so a %s's "
                        "frames are not written there (labels/ and detections.json hold them)", source.kind)
    out = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    earlier = replace_previous_run(out)
    if earlier is not None:
        log.warning("output_dir=%s held the results of an earlier run (source=%s): they are replaced", out, earlier)
    # until the run ends, its summary says it is not complete (a script reading it after a Ctrl-C must not go on)
    started: dict[str, Any] = {"source": str(spec), "kind": source.kind, "complete": False, "output_dir": str(out)}
    write_json(out / "summary.json", started)
    writer = OutputWriter(out, detector.class_names, cfg.save_images, cfg.save_kitti, cfg.save_json, cfg.save_wider)
    read = frames = faces = 0
    skipped: Counter[str] = Counter()
    skipped_files: list[str] = []
    start = time.perf_counter()
    batch: list = []
    running: deque[tuple[list, Future]] = deque()  # batches in the model, oldest first
    written: deque[Future] = deque()

    def write(frames_: list, cov: np.ndarray, bbox: np.ndarray) -> tuple[int, int]:
        dets = detector.decode(cov, bbox, [f.prepared[1] for f in frames_])
        for frame, det in zip(frames_, dets, strict=True):
            writer.add(frame.image, det, frame.name, frame.index, frame.path)
        return len(frames_), sum(len(d) for d in dets)

    def flush(models: ThreadPoolExecutor, pool: ThreadPoolExecutor, end: bool = False) -> None:
        nonlocal frames, faces
        if batch:
            running.append((list(batch), models.submit(detector.run, [f.prepared[0] for f in batch])))
            batch.clear()
        while len(running) > (0 if end else workers):  # the next batch fills while ``workers`` batches run
            frames_, result = running.popleft()
            written.append(pool.submit(write, frames_, *result.result()))  # in order, so a video stays in order
        while len(written) > (0 if end else 2):  # bounded: at most 2 batches wait for the writer
            n_frames, n_faces = written.popleft().result()
            frames, faces = frames + n_frames, faces + n_faces

    max_frames = cfg.get("max_frames") or 0  # 0: no limit
    total = min(n for n in (len(source), max_frames) if n) if len(source) or max_frames else None
    bar = tqdm(source, total=total, desc="inference", unit="frame" if source.kind != "images" else "img")
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="model") as models, \
                ThreadPoolExecutor(1, thread_name_prefix="writer") as pool:
            try:
                for frame in bar:
                    if max_frames and read >= max_frames:  # checked here, so the bar counts the last one it ran
                        break
                    if frame.image is None:
                        skipped[frame.error.kind if frame.error else "unreadable"] += 1
                        skipped_files.append(str(frame.error or frame.path))
                        continue
                    if writer.video is None and source.kind != "images" and cfg.save_images:  # the frames' size
                        size = frame.image.shape[1::-1]
                        video = writer.open_video(source.video_name, source.fps / source.frame_stride, size)
                        write_json(out / "summary.json", {**started, "video": str(video)})  # a rerun finds it
                    read += 1
                    batch.append(frame)
                    if len(batch) == cfg.batch_size:
                        flush(models, pool)
            except KeyboardInterrupt as e:
                if not source.live:
                    raise
                # how a camera or stream run ends: the frames read so far are still run, written and counted
                log.info("%s stopped (%s): finishing the outputs", source.kind, type(e).__name__)
            flush(models, pool, end=True)
    except BaseException:
        stop_early(writer, started)
        raise
    writer.close()
    seconds = time.perf_counter() - start
    n_skipped = sum(skipped.values())
    summary = {"source": str(spec), "kind": source.kind, "complete": True, "frames": frames, "skipped": n_skipped,
               "skipped_by_kind": dict(skipped), "skipped_files": skipped_files, "faces": faces,
               "seconds": seconds, "images_per_s": frames / seconds if seconds else 0.0, "output_dir": str(out),
               "video": str(writer.video_path) if writer.video_path else None,
               "video_frames_missing": source.missing_frames,
               "score": detector.decoder.score,
               "confidence_threshold": detector.decoder.confidence_threshold,
               "model_score_threshold": detector.backend.postprocess.get("score_threshold")}
    write_json(out / "summary.json", summary)
    why = f": {', '.join(f'{n} {k}' for k, n in sorted(skipped.items()))}" if n_skipped else ""
    if source.missing_frames:
        why += f"; the video ended {source.missing_frames} frames before its header's count (truncated or corrupt)"
    print(f"{frames} {'images' if source.kind == 'images' else 'frames'} ({n_skipped} skipped{why}), {faces} faces, "
          f"{summary['images_per_s']:.1f} images/s -> {out}")
    if not frames and n_skipped:  # a script's `infer && publish` must not go on with empty results
        raise ValueError(f"source={spec}: none of its {n_skipped} images could be read{why}; "
                         f"{out / 'summary.json'} lists them")
    if not frames:
        raise ValueError(f"source={spec}: no frame could be read from the {source.kind}{why}")
    return summary
