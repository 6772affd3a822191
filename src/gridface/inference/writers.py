"""What inference writes: annotated images or video, KITTI labels, COCO-results JSON, WIDER layout."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from gridface.evaluation.widerface import write_submission
from gridface.postprocess import Detections
from gridface.utils.io import atomic_path, write_text

log = logging.getLogger(__name__)


def draw(out: np.ndarray, det: Detections, class_names: list[str]) -> np.ndarray:
    """Boxes and scores drawn in place on a BGR image (as OpenCV's writers take it), which is returned; line width
    and font scale follow the image size."""
    t = max(1, round(min(out.shape[:2]) / 400))
    for (x1, y1, x2, y2), s, c in zip(det.boxes, det.scores, det.labels, strict=True):
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, (0, 255, 0), t)
        label = f"{class_names[int(c)] if len(class_names) > 1 else ''}{s:.2f}"
        cv2.putText(out, label, (p1[0], max(10, p1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, (0, 255, 0), t)
    return out


def kitti_lines(det: Detections, class_names: list[str]) -> str:
    """TAO's KITTI layout: class, truncation, occlusion, alpha, x1 y1 x2 y2, 3D fields zero, score."""
    return "".join(f"{class_names[int(c)]} 0.00 0 0.00 {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f} "
                   f"0.00 0.00 0.00 0.00 0.00 0.00 0.00 {s:.5f}\n"
                   for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True))


OUTPUT_FOLDERS = ("images", "labels", "wider")  # what a run writes per frame, besides detections.json and a video


def replace_previous_run(out: Path) -> str | None:
    """Removes the outputs of an earlier ``gridface.infer`` run in ``out`` (told by its summary.json), so that a
    rerun into the same ``output_dir=`` does not mix the two runs' label files and images, nor leave the earlier
    summary claiming a finished run when this one stops early. Only the names a run writes are removed. The
    earlier run's source, or None when ``out`` holds no earlier run."""
    summary_file = out / "summary.json"
    try:
        earlier = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict) or "source" not in earlier or "output_dir" not in earlier:
        return None  # not a gridface.infer summary: leave the folder as it is
    for name in OUTPUT_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    video = earlier.get("video")
    for file in [out / "detections.json", *(video_files(out, Path(video).name) if video else [])]:
        file.unlink(missing_ok=True)
    summary_file.unlink(missing_ok=True)
    return str(earlier["source"])


def video_files(out: Path, name: str) -> list[Path]:
    """The files a run's annotated video ``name`` (as its summary records it, finished or partial) can have left
    in ``out``: finished, partial (Ctrl-C) and the hidden file being written (a killed run). Told by name only, as
    the video is always written into ``out`` (a summary's path may be relative to another folder)."""
    stem = name.removesuffix(".mp4").removesuffix(".partial")
    if not stem.endswith("_annotated") or "/" in stem:
        return []  # not a name a run writes: leave it
    return [out / f"{stem}.mp4", out / f"{stem}.partial.mp4", out / f".{stem}.partial.mp4"]


class OutputWriter:
    """Writes each frame's outputs as it comes. Frames are BGR (as :class:`Source` gives them with
    ``color="BGR"``); an annotated frame is drawn on in place, so hand over frames that are not used again."""

    def __init__(self, out_dir: Path, class_names: list[str], save_images: bool = True, save_kitti: bool = True,
                 save_json: bool = True, save_wider: bool = False) -> None:
        self.out = Path(out_dir)
        self.class_names = class_names
        self.save_images, self.save_kitti = save_images, save_kitti
        self.save_json, self.save_wider = save_json, save_wider
        self.coco: list[dict] = []
        self.video: cv2.VideoWriter | None = None
        self.video_path: Path | None = None
        self._video_staging: Path | None = None
        self._video_size: tuple[int, int] | None = None
        self._resized = False

    def open_video(self, name: str, fps: float, size: tuple[int, int]) -> Path:
        """The annotated video is written as ``.<name>_annotated.partial.mp4`` and renamed when complete: an mp4 is
        playable only once closed (its index is written last), so a killed run never leaves an unplayable file
        under the final name. MPEG-4 frames have even sides: an odd one gets a black column or row (the encoder
        would crop the last one). Returns the final path."""
        self.video_path = self.out / f"{name}_annotated.mp4"
        self.video_path.parent.mkdir(parents=True, exist_ok=True)
        self._video_staging = self.video_path.with_name(f".{name}_annotated.partial.mp4")
        even = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        if even != tuple(size):
            log.warning("%s: the frames are %dx%d, the video %dx%d (MPEG-4 takes even sides: a black column or row "
                        "added, no pixel lost; the labels keep the frames' coordinates)", self.video_path.name,
                        *size, *even)
        self._video_size = even
        self.video = cv2.VideoWriter(str(self._video_staging), cv2.VideoWriter_fourcc(*"mp4v"), fps, even)
        if not self.video.isOpened():
            self.video = None
            raise ValueError(f"cannot write video {self.video_path} ({even[0]}x{even[1]} at {fps:g} frames per "
                             "second) with OpenCV's mp4v encoder; save_images=false writes the labels and JSON "
                             "without it")
        return self.video_path

    def add(self, image_bgr: np.ndarray, det: Detections, name: str, index: int, path: Path | None) -> None:
        if self.video is not None:
            self.video.write(self._video_frame(draw(image_bgr, det, self.class_names)))
        elif self.save_images:
            ok, jpg = cv2.imencode(".jpg", draw(image_bgr, det, self.class_names))
            if not ok:
                raise RuntimeError(f"could not encode the annotated image for {name}")
            with atomic_path(self.out / "images" / f"{name}.jpg") as tmp:
                tmp.write_bytes(jpg.tobytes())
        if self.save_kitti:
            write_text(self.out / "labels" / f"{name}.txt", kitti_lines(det, self.class_names))
        if self.save_wider and path is not None:
            write_submission(self.out / "wider", path.parent.name, path.stem, det.boxes, det.scores)
        if self.save_json:
            for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True):
                self.coco.append({"image_id": index, "file_name": str(path) if path else name,
                                  "category_id": int(c) + 1, "category": self.class_names[int(c)],
                                  "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                                           round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                                  "score": round(float(s), 5)})

    def _video_frame(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the video's size (the encoder drops a frame of another size without a word): an odd side
        padded, a frame of another size (the stream changed size) resized, with a warning the first time."""
        h, w = frame.shape[:2]
        width, height = self._video_size or (w, h)
        if (w, h) == (width, height):
            return frame
        if 0 <= width - w <= 1 and 0 <= height - h <= 1:
            return cv2.copyMakeBorder(frame, 0, height - h, 0, width - w, cv2.BORDER_CONSTANT)
        if not self._resized:
            log.warning("%s: a frame of %dx%d in a video of %dx%d: resized to it", self.video_path, w, h, width,
                        height)
            self._resized = True
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    def close(self, complete: bool = True) -> None:
        """Finish the outputs. ``complete=False`` (the run stopped early): the video, closed and playable, keeps the
        frames written so far as ``<name>_annotated.partial.mp4``, and no detections.json claims the whole source."""
        if self.video is not None:
            self.video.release()
            self.video = None
            if self._video_staging is not None and self._video_staging.exists():
                if not complete:
                    self.video_path = self.video_path.with_name(self.video_path.stem + ".partial.mp4")
                os.replace(self._video_staging, self.video_path)
            else:  # the writer never opened: no video
                self.video_path = None
        if self.save_json and complete:
            write_text(self.out / "detections.json", json.dumps(self.coco))
