"""The infer stage (``python -m gridface.infer model=<.ckpt | .onnx | engine> source=<image | folder | glob | video |
camera>``)

Writes annotated images (or an annotated video, same frame rate and size), KITTI labels, detections as
COCO-results JSON and, with ``save_wider=true``, the WIDER submission layout; prints a summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from gridface.data.config import split_samples, stage_data_config
from gridface.inference.detector import Detector
from gridface.inference.sources import Source
from gridface.inference.writers import OutputWriter
from gridface.utils.hydra import overrides
from gridface.utils.io import write_json
from gridface.utils.validate import check_stage_config

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


def run(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    if cfg.get("model") is None:
        raise ValueError("give model=<.ckpt | .onnx | engine> and source=<image | folder | glob | video | camera>")
    detector = Detector.load(cfg.model, cfg.device, cfg.get("threads"), spin=bool(cfg.get("spin", False)),
                             **overrides(cfg.postprocess))
    spec = cfg.source if cfg.get("source") is not None else default_source(detector, cfg.model)
    # Three stages overlap: reader threads decode and prepare (letterbox, CHW float), this thread runs the model,
    # one writer thread decodes the maps into boxes and writes (in order, so a video stays in order).
    source = Source(spec, cfg.frame_stride, cfg.prefetch, cfg.read_workers, prepare=detector.prepare)
    out = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    writer = OutputWriter(out, detector.class_names, cfg.save_images, cfg.save_kitti, cfg.save_json, cfg.save_wider)
    frames = faces = 0
    skipped: Counter[str] = Counter()
    skipped_files: list[str] = []
    start = time.perf_counter()
    batch: list = []
    written: deque[Future] = deque()

    def write(frames_: list, cov: np.ndarray, bbox: np.ndarray) -> int:
        dets = detector.decode(cov, bbox, [f.prepared[1] for f in frames_])
        for frame, det in zip(frames_, dets, strict=True):
            writer.add(frame.image, det, frame.name, frame.index, frame.path)
        return sum(len(d) for d in dets)

    def flush(pool: ThreadPoolExecutor, keep: int = 2) -> None:
        nonlocal faces
        if batch:
            cov, bbox = detector.run([f.prepared[0] for f in batch])
            written.append(pool.submit(write, list(batch), cov, bbox))
            batch.clear()
        while len(written) > keep:  # bounded: at most ``keep`` batches wait for the writer
            faces += written.popleft().result()

    total = min(n for n in (len(source), cfg.get("max_frames")) if n) if len(source) or cfg.get("max_frames") else None
    bar = tqdm(source, total=total, desc="inference", unit="frame" if source.kind != "images" else "img")
    with ThreadPoolExecutor(1, thread_name_prefix="writer") as pool:
        for frame in bar:
            if writer.video is None and source.kind != "images" and cfg.save_images:
                name = Path(str(spec)).stem if source.kind == "video" else f"camera{spec}"
                writer.open_video(name, source.fps / source.frame_stride, source.size)
            if frame.image is None:
                skipped[frame.error.kind if frame.error else "unreadable"] += 1
                skipped_files.append(str(frame.error or frame.path))
                continue
            frames += 1
            batch.append(frame)
            if len(batch) == cfg.batch_size:
                flush(pool)
            if cfg.get("max_frames") and frames >= cfg.max_frames:
                break
        flush(pool, keep=0)
    writer.close()
    seconds = time.perf_counter() - start
    n_skipped = sum(skipped.values())
    summary = {"source": str(spec), "kind": source.kind, "frames": frames, "skipped": n_skipped,
               "skipped_by_kind": dict(skipped), "skipped_files": skipped_files, "faces": faces,
               "seconds": seconds, "images_per_s": frames / seconds if seconds else 0.0, "output_dir": str(out),
               "video": str(writer.video_path) if writer.video_path else None,
               "video_frames_missing": source.missing_frames}
    write_json(out / "summary.json", summary)
    why = f": {', '.join(f'{n} {k}' for k, n in sorted(skipped.items()))}" if n_skipped else ""
    if source.missing_frames:
        why += f"; the video ended {source.missing_frames} frames before its header's count (truncated or corrupt)"
    print(f"{frames} {'images' if source.kind == 'images' else 'frames'} ({n_skipped} skipped{why}), {faces} faces, "
          f"{summary['images_per_s']:.1f} images/s -> {out}")
    return summary
