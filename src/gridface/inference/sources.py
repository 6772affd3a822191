"""Where frames come from: an image, a folder, a glob, a video file, a camera index or a stream URL (RTSP, HTTP...:
whatever OpenCV's FFmpeg opens).

Reading, decoding and the model's preprocessing (``prepare``: the letterbox) run in background threads
ahead of the model (``prefetch`` items), so the model, not I/O, sets the pace; OpenCV releases the GIL, so they
run in parallel with it. Unusable files in a folder (missing, truncated, corrupt: the checks of
:mod:`gridface.data.images`) are reported and skipped, files of other types listed in one warning. A frame's
``name`` is its path relative to the folder or glob root without the suffix (with it where two files differ only
there), so same-named files in different sub-folders keep apart in the outputs.
"""

from __future__ import annotations

import glob as globlib
import logging
import math
import os
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gridface.data.images import IMAGE_SUFFIXES, ImageReadError, read_image_bgr, read_image_rgb
from gridface.utils.validate import check_number

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Frame:
    image: np.ndarray | None  # uint8 in the source's ``color`` order (RGB unless asked); None when unusable
    name: str                 # path relative to the source root without suffix (a/b/photo), or frame_<index>
    path: Path | None         # source file for images
    index: int
    error: ImageReadError | None = None  # why ``image`` is None
    prepared: Any = None  # what ``Source(prepare=...)`` made of the image (the network input)


def report_left_out(folder: Path, files: list[Path], shown: int = 5) -> None:
    """One warning for the files of a source folder that are not images gridface reads (a .gif, .heic, a video):
    left out, never silently."""
    if not files:
        return
    suffixes = sorted({f.suffix.lower() or "(no suffix)" for f in files})
    names = ", ".join(str(f.relative_to(folder)) for f in files[:shown]) + (", ..." if len(files) > shown else "")
    log.warning("%s: %d files left out, not images gridface reads (%s): %s; it reads %s", folder, len(files),
                ", ".join(suffixes), names, ", ".join(IMAGE_SUFFIXES))


DEFAULT_FPS = 25.0
MAX_FPS = 1000.0  # above: a clock rate (RTSP's 90,000) or a broken header, not frames per second


def frame_rate(cap: cv2.VideoCapture, what: str) -> float:
    """The frames per second a capture reports, or 25 (with a warning) where it reports none or a number no
    video has: the annotated video is written at this rate, and its encoder refuses rates above 65,535."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if math.isfinite(fps) and 0 < fps <= MAX_FPS:
        return fps
    if fps:
        log.warning("%s reports %g frames per second: the annotated video is written at %g", what, fps, DEFAULT_FPS)
    return DEFAULT_FPS


STREAM_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def stream_name(url: str) -> str:
    """A file name for what a stream URL shows, without its scheme and credentials: ``rtsp://user:pw@cam1:8554/live``
    is ``cam1_8554_live``."""
    where = url.split("://", 1)[1].rsplit("@", 1)[-1]
    return re.sub(r"[^A-Za-z0-9]+", "_", where).strip("_")[:80] or "stream"


class Source:
    """Iterates frames. ``kind`` is ``images``, ``video``, ``camera`` or ``stream`` (the last two are ``live``: read
    until they end or the run is stopped); ``fps``/``size`` for video."""

    def __init__(self, spec: str | int, frame_stride: int = 1, prefetch: int = 8, workers: int = 2,
                 prepare: Callable[[np.ndarray], Any] | None = None, color: str = "RGB") -> None:
        """``color="BGR"`` keeps frames as OpenCV decodes them: a consumer that draws and encodes with OpenCV
        then converts nothing at full size."""
        if color.upper() not in ("RGB", "BGR"):
            raise ValueError(f"color must be 'RGB' or 'BGR', got '{color}'")
        self.spec = spec
        self.prepare = prepare
        self.bgr = color.upper() == "BGR"
        check_number("frame_stride", frame_stride, 1, integer=True)
        self.frame_stride = int(frame_stride)
        self.prefetch, self.workers = prefetch, workers
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None
        self.files: list[Path] = []
        self.root: Path | None = None
        self.frame_count = 0
        self.missing_frames = 0  # video: frames the header promised that could not be read
        self._names: dict[Path, str] | None = None
        p = Path(str(spec)).expanduser()
        if (isinstance(spec, int) or str(spec).isdigit()) and not p.exists():  # a folder named 2024 is a folder
            self.kind = "camera"
            self.camera: int | str = int(spec)
            return
        if STREAM_URL.match(str(spec)):
            self.kind = "stream"
            self.camera = str(spec)
            return
        if any(ch in str(spec) for ch in "*?["):
            self.kind = "images"
            matched = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
            self.files = [f for f in matched if f.suffix.lower() in IMAGE_SUFFIXES]
            others = [f for f in matched if f.suffix.lower() not in IMAGE_SUFFIXES]
            if not self.files:
                videos = [f for f in others if f.suffix.lower() in VIDEO_SUFFIXES]
                raise FileNotFoundError(f"no images match '{spec}'" + (
                    f" (it matches {len(videos)} video(s), e.g. {videos[0]}: a glob reads images; give a video "
                    "as source=<file>)" if videos else ""))
            self.root = Path(os.path.commonpath([str(f.parent) for f in self.files]))
            if others:
                report_left_out(Path(os.path.commonpath([str(f.parent) for f in matched])), others)
        elif p.is_dir():
            self.kind = "images"
            # a dangling link is listed too: the reader reports it as missing (is_file() dropped it silently)
            found = sorted(f for f in p.rglob("*") if (f.is_file() or f.is_symlink() and not f.exists())
                           and not f.name.startswith("."))
            self.files = [f for f in found if f.suffix.lower() in IMAGE_SUFFIXES]
            report_left_out(p, [f for f in found if f.suffix.lower() not in IMAGE_SUFFIXES])
            if not self.files:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            self.root = p
        elif not p.exists():
            raise FileNotFoundError(f"source not found: {p}")
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            self.kind = "images"
            self.files = [p]
            self.root = p.parent
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            self.kind = "video"
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise ValueError(f"cannot open video {p} (unsupported codec or corrupt file)")
            self.fps = frame_rate(cap, f"video {p}")
            self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
        else:
            raise ValueError(f"unsupported source type '{p.suffix}' for {p}: expected an image "
                             f"({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}), "
                             "a folder, a glob, a camera index or a stream URL")

    @property
    def live(self) -> bool:
        """A camera or a stream: no end known beforehand; Ctrl-C (or SIGTERM) is how a run on it ends."""
        return self.kind in ("camera", "stream")

    @property
    def video_name(self) -> str:
        """The stem of the annotated video a run on this source writes."""
        if self.kind == "video":
            return Path(str(self.spec)).stem
        return f"camera{self.camera}" if self.kind == "camera" else stream_name(str(self.camera))

    def __len__(self) -> int:
        if self.kind == "images":
            return len(self.files)
        if self.kind == "video":
            return (max(self.frame_count, 0) + self.frame_stride - 1) // self.frame_stride
        return 0

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "images":
            yield from self._images()
        else:
            yield from self._video()

    def name_of(self, f: Path) -> str:
        """The file's path relative to the root without its suffix, or with it where another file of the source has
        the same path but another suffix (``photo.jpg`` and ``photo.png``: ``photo.jpg``, ``photo.png``), so that no
        two files write one output."""
        if self._names is None:  # once, over the whole listing (the files are fixed when the source is built)
            relative = {g: g.relative_to(self.root) if self.root else Path(g.name) for g in self.files}
            stems = Counter(r.with_suffix("") for r in relative.values())
            self._names = {g: (r.with_suffix("") if stems[r.with_suffix("")] == 1 else r).as_posix()
                           for g, r in relative.items()}
        return self._names[f]

    def _load(self, f: Path) -> tuple[np.ndarray, Any]:
        image = read_image_bgr(f) if self.bgr else read_image_rgb(f)
        return image, self.prepare(image) if self.prepare else None

    def _images(self) -> Iterator[Frame]:
        with ThreadPoolExecutor(self.workers) as pool:
            pending = []
            for i, f in enumerate(self.files):
                pending.append((i, f, pool.submit(self._load, f)))
                if len(pending) >= self.prefetch:
                    yield self._frame(*pending.pop(0))
            for item in pending:
                yield self._frame(*item)

    def _frame(self, i: int, f: Path, future) -> Frame:  # noqa: ANN001
        try:
            image, prepared = future.result()
            return Frame(image, self.name_of(f), f, i, prepared=prepared)
        except ImageReadError as e:
            log.warning("skipping image %s", e)
            return Frame(None, self.name_of(f), f, i, e)

    def _video(self) -> Iterator[Frame]:
        """Frames decoded (and prepared) by a reader thread, ``prefetch`` ahead of the consumer."""
        frames: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        done = object()

        def reader() -> None:
            try:
                for frame in self._decode_video():
                    if self.prepare:
                        frame.prepared = self.prepare(frame.image)
                    while not stop.is_set():
                        try:
                            frames.put(frame, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                frames.put(done)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                frames.put(e)

        thread = threading.Thread(target=reader, name="video-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = frames.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def _decode_video(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(self.camera if self.live else str(self.spec))
        if not cap.isOpened():
            raise ValueError(f"cannot open {self.kind} {self.spec}")
        if self.live:
            self.fps = frame_rate(cap, f"{self.kind} {self.spec}")
            self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        i = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if i % self.frame_stride == 0:
                    yield Frame(bgr if self.bgr else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"frame_{i:06d}", None, i)
                i += 1
        finally:
            cap.release()
        if self.kind == "video" and self.frame_count > 0 and i < self.frame_count:
            self.missing_frames = self.frame_count - i
            log.warning("video %s ended after %d of the %d frames its header promises: truncated or corrupt",
                        self.spec, i, self.frame_count)
