"""Synthetic faces: a deterministic, cluttered face-detection set written in KITTI layout.

Each image has a textured background, non-face distractors (skin-coloured blobs without features,
eyes-like dots, shapes) and 1..N faces from ~8 px to a third of the image height with varied skin
tone, aspect, in-plane rotation, yaw (features shifted sideways), hair, glasses, blur and partial
occlusion. Everything derives from one seed, so a validation split with another seed is a truly
held-out set. Faces are drawn on a large canvas and shrunk (anti-aliased); the label is the bounding
box of the rotated face ellipse.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

SKIN_TONES_BGR = np.array(
    [[189, 224, 255], [148, 205, 255], [134, 192, 234], [96, 173, 234], [80, 147, 198],
     [60, 110, 170], [45, 80, 130], [35, 57, 90], [120, 160, 220], [105, 140, 190]], np.float64)
CANVAS = 96  # face canvas width in px before shrinking
# Bumped whenever the same spec would draw other images: it is part of the cache key. 2: one random stream per
# image (seed, index), so images are generated in parallel processes and are the same for any process count.
# 3: float32 pixels and sensor noise read from a fixed bank of normal samples at a per-image offset (drawing 2
# million float64 normals twice per 1024x700 image was about two thirds of its rendering time).
GENERATOR_VERSION = 3
IMAGES_PER_PROCESS = 256  # below this many images per process, starting processes costs more than it gives
NOISE_BANK = 1 << 22  # standard normal samples (16 MB float32) every image's noise is a window of


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Face heights: with probability ``small_fraction`` log-uniform in
    [``min_face``, ``small_face``) px (smaller than one stride-16 cell), otherwise log-uniform in
    [``small_face``, ``max_face_frac`` x image height]."""

    num_images: int = 1500
    width: int = 256
    height: int = 160
    seed: int = 0
    min_faces: int = 1
    max_faces: int = 6
    min_face: float = 8.0
    small_face: float = 16.0
    small_fraction: float = 0.25
    max_face_frac: float = 1.0 / 3.0
    distractors: tuple[int, int] = (2, 8)

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


def image_rng(seed: int, index: int) -> np.random.Generator:
    """Image ``index``'s own random stream: independent of the others, so any process can draw it."""
    return np.random.default_rng([seed, index])


def _render_file(spec: SyntheticSpec, index: int, path: Path) -> np.ndarray:
    """Render image ``index`` into ``path`` (JPEG, quality 95) and return its boxes: the worker writes the file
    itself, so only the boxes travel back to the parent (not ~300 KB of JPEG per 1024x700 image)."""
    img, boxes = render_image(image_rng(spec.seed, index), spec)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"could not encode synthetic image {index} of {spec}")
    path.write_bytes(jpeg.tobytes())
    return boxes


def rendered(spec: SyntheticSpec, paths: list[Path], desc: str, processes: int | None = None
             ) -> Iterator[tuple[int, np.ndarray]]:
    """Render every image ``i`` of ``spec`` into ``paths[i]`` (their folders must exist) in ``processes`` worker
    processes (default: one per core, when there are enough images to be worth it); yield ``(i, boxes)`` in index
    order."""
    n = spec.num_images
    if len(paths) != n:
        raise ValueError(f"{n} images but {len(paths)} paths")
    if processes is None:
        processes = min(os.cpu_count() or 1, n // IMAGES_PER_PROCESS)
    indices = range(n)
    import multiprocessing

    # spawn, not fork: a forked child inherits the parent's OpenCV and OpenMP thread pools without their threads,
    # and hung in cv2 in a test run after other tests had used them (a caller's script needs a __main__ guard)
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=cv2.setNumThreads, initargs=(1,)) if processes > 1 else None
    with pool or contextlib.nullcontext():  # a process per core: one OpenCV thread each
        results = (pool.map(_render_file, [spec] * n, indices, paths, chunksize=32) if pool
                   else map(_render_file, [spec] * n, indices, paths))
        yield from zip(indices, tqdm(results, total=n, desc=desc, leave=False), strict=True)


@functools.cache
def _noise_bank() -> np.ndarray:
    """``2 * NOISE_BANK`` float32 standard normals, the bank twice over so that any window of up to ``NOISE_BANK``
    samples from an offset below ``NOISE_BANK`` is one slice. The same in every process (a fixed seed)."""
    bank = np.random.default_rng(GENERATOR_VERSION).standard_normal(NOISE_BANK, dtype=np.float32)
    return np.concatenate([bank, bank])


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise of ``shape`` (float32): a window of the bank at an offset drawn from ``rng``, scaled. Within
    one image the samples are independent up to ``NOISE_BANK`` values (1,398,101 RGB pixels), then the window
    repeats."""
    n = int(np.prod(shape))
    start = int(rng.integers(NOISE_BANK))
    window = _noise_bank()[start:start + min(n, NOISE_BANK)]
    return (window if n <= NOISE_BANK else np.resize(window, n)).reshape(shape) * np.float32(sigma)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(0, 255, 3)
    other = rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)[:, None]
    grad = (base[None] * (1 - t) + other[None] * t).astype(np.float32)
    img = np.broadcast_to(grad[None] if len(t) == w else grad[:, None], (h, w, 3)).copy()
    for _ in range(rng.integers(3, 12)):  # clutter
        color = rng.uniform(0, 255, 3).tolist()
        kind = rng.integers(3)
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, p, q, color, -1 if rng.random() < 0.6 else int(rng.integers(1, 4)))
        elif kind == 1:
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p, q, color, int(rng.integers(1, 5)))
        else:
            cv2.circle(img, p, int(rng.integers(3, max(4, h // 3))), color, -1)
    img += _noise(rng, img.shape, rng.uniform(2, 12))
    return np.clip(img, 0, 255, out=img)


def _face_canvas(rng: np.random.Generator, aspect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one face on a canvas; returns (bgr, alpha of everything drawn, mask of the face ellipse)."""
    cw = CANVAS
    ch = int(round(cw * aspect))
    pad = cw // 2
    H, W = ch + 2 * pad, cw + 2 * pad
    img = np.zeros((H, W, 3), np.float32)
    alpha = np.zeros((H, W), np.float32)
    face = np.zeros((H, W), np.uint8)
    cx, cy = W // 2, H // 2
    ax, ay = cw // 2, ch // 2
    skin = SKIN_TONES_BGR[rng.integers(len(SKIN_TONES_BGR))] * rng.uniform(0.85, 1.15)
    skin = np.clip(skin, 0, 255)
    if rng.random() < 0.75:  # hair behind / on top
        hair = rng.uniform(0, 90, 3) if rng.random() < 0.8 else rng.uniform(90, 220, 3)
        cv2.ellipse(img, (cx, cy - int(ay * 0.25)), (int(ax * 1.12), int(ay * 0.95)), 0, 180, 360, hair.tolist(), -1)
        cv2.ellipse(alpha, (cx, cy - int(ay * 0.25)), (int(ax * 1.12), int(ay * 0.95)), 0, 180, 360, 1.0, -1)
    cv2.ellipse(img, (cx, cy), (ax, ay), 0, 0, 360, skin.tolist(), -1)
    cv2.ellipse(alpha, (cx, cy), (ax, ay), 0, 0, 360, 1.0, -1)
    cv2.ellipse(face, (cx, cy), (ax, ay), 0, 0, 360, 255, -1)
    # Shading: darker toward one side, as lit from an angle.
    xs = (np.arange(W) - cx) / max(ax, 1)
    shade = 1.0 - rng.uniform(0, 0.35) * np.clip(xs * rng.choice([-1, 1]), 0, 1)
    img *= shade.astype(np.float32)[None, :, None]
    yaw = rng.uniform(-0.35, 0.35) * ax  # shifts features sideways
    eye_y = cy - int(ay * rng.uniform(0.1, 0.25))
    eye_dx = int(ax * rng.uniform(0.35, 0.5))
    eye_r = max(2, int(ax * rng.uniform(0.12, 0.18)))
    iris = rng.uniform(0, 120, 3).tolist()
    for side in (-1, 1):
        ex = int(cx + yaw + side * eye_dx)
        cv2.ellipse(img, (ex, eye_y), (eye_r + 2, eye_r), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, (ex + int(yaw * 0.15), eye_y), max(1, eye_r * 2 // 3), iris, -1)
        cv2.circle(img, (ex + int(yaw * 0.15), eye_y), max(1, eye_r // 3), (10, 10, 10), -1)
        brow = (skin * rng.uniform(0.2, 0.5)).tolist()
        cv2.line(img, (ex - eye_r - 2, eye_y - eye_r - 4), (ex + eye_r + 2, eye_y - eye_r - 5 + side), brow, 3)
    if rng.random() < 0.15:  # glasses
        for side in (-1, 1):
            cv2.circle(img, (int(cx + yaw + side * eye_dx), eye_y), eye_r + 5, (20, 20, 20), 2)
    nose_top, nose_bot = eye_y + eye_r, cy + int(ay * 0.25)
    nx = int(cx + yaw * 1.2)
    cv2.line(img, (nx, nose_top), (nx - 4, nose_bot), (skin * 0.7).tolist(), 3)
    cv2.line(img, (nx - 6, nose_bot), (nx + 6, nose_bot), (skin * 0.6).tolist(), 2)
    mouth_y = cy + int(ay * rng.uniform(0.45, 0.6))
    lips = (rng.uniform(40, 110), rng.uniform(40, 100), rng.uniform(120, 200))
    mw = int(ax * rng.uniform(0.3, 0.5))
    cv2.ellipse(img, (int(cx + yaw), mouth_y), (mw, max(2, int(ay * rng.uniform(0.04, 0.14)))), 0,
                0, 360 if rng.random() < 0.5 else 180, lips, -1)
    return img, alpha, face


def _paste_face(rng: np.random.Generator, img: np.ndarray, size: float, x: float, y: float,
                aspect: float, angle: float) -> np.ndarray | None:
    """Draw a face whose ellipse is ``size`` px tall centred near (x, y); return its box or None."""
    canvas, alpha, face = _face_canvas(rng, aspect)
    H, W = face.shape
    rot = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rot, (W, H), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, rot, (W, H), flags=cv2.INTER_LINEAR)
    face = cv2.warpAffine(face, rot, (W, H), flags=cv2.INTER_NEAREST)
    scale = size / (CANVAS * aspect)
    tw, th = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
    canvas = cv2.resize(canvas, (tw, th), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, (tw, th), interpolation=cv2.INTER_AREA)
    face = cv2.resize(face, (tw, th), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.25:  # defocus / motion-like blur
        k = int(rng.choice([3, 5])) if size > 16 else 3
        canvas = cv2.GaussianBlur(canvas, (k, k), 0)
        alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    x0, y0 = int(round(x - tw / 2)), int(round(y - th / 2))
    ih, iw = img.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(iw, x0 + tw), min(ih, y0 + th)
    if xb <= xa or yb <= ya:
        return None
    crop = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
    a = alpha[crop][..., None]
    img[ya:yb, xa:xb] = img[ya:yb, xa:xb] * (1 - a) + canvas[crop] * a
    ys, xs = np.nonzero(face[crop] > 127)
    if len(xs) == 0:
        return None
    return np.array([xa + xs.min(), ya + ys.min(), xa + xs.max() + 1, ya + ys.max() + 1], np.float64)


def _distractor(rng: np.random.Generator, img: np.ndarray, max_size: float) -> None:
    h, w = img.shape[:2]
    size = float(np.exp(rng.uniform(np.log(6), np.log(max(7, max_size)))))
    c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    kind = rng.integers(4)
    color = (SKIN_TONES_BGR[rng.integers(len(SKIN_TONES_BGR))] if rng.random() < 0.5
             else rng.uniform(0, 255, 3)).tolist()
    axes = (max(2, int(size / 2 * rng.uniform(0.6, 1.0))), max(2, int(size / 2)))
    if kind == 0:  # featureless skin blob
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    elif kind == 1:  # two dark dots (eye-like) without a face
        d = max(2, int(size / 4))
        for s in (-1, 1):
            cv2.circle(img, (c[0] + s * d, c[1]), max(1, d // 2), (20, 20, 20), -1)
    elif kind == 2:  # ring / ball
        cv2.circle(img, c, axes[1], color, int(rng.integers(1, 4)))
    else:  # polygon
        pts = rng.normal(0, size / 2, (5, 2)) + np.array(c)
        cv2.fillPoly(img, [pts.astype(np.int32)], color)


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 BGR) and its face boxes ``[N, 4]`` xyxy."""
    h, w = spec.height, spec.width
    img = _background(rng, h, w)
    max_face = spec.max_face_frac * h
    for _ in range(rng.integers(*spec.distractors)):
        _distractor(rng, img, max_face)
    boxes: list[np.ndarray] = []
    for _ in range(rng.integers(spec.min_faces, spec.max_faces + 1)):
        for _attempt in range(10):
            lo, hi = ((spec.min_face, spec.small_face) if rng.random() < spec.small_fraction
                      else (spec.small_face, max_face))
            size = float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))
            aspect = rng.uniform(1.1, 1.45)
            x, y = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
            est = np.array([x - size / aspect / 2, y - size / 2, x + size / aspect / 2, y + size / 2])
            if all(_iou(est, b) < 0.1 for b in boxes):
                box = _paste_face(rng, img, size, x, y, aspect, float(rng.uniform(-25, 25)))
                if box is not None:
                    boxes.append(box)
                break
    for b in boxes:  # partial occlusion by a random bar
        if rng.random() < 0.2:
            bw, bh = b[2] - b[0], b[3] - b[1]
            frac = rng.uniform(0.15, 0.4)
            color = rng.uniform(0, 255, 3).tolist()
            if rng.random() < 0.5:
                x0 = int(b[0] if rng.random() < 0.5 else b[2] - frac * bw)
                cv2.rectangle(img, (x0, int(b[1])), (int(x0 + frac * bw), int(b[3])), color, -1)
            else:
                cv2.rectangle(img, (int(b[0]), int(b[3] - frac * bh)), (int(b[2]), int(b[3])), color, -1)
    img += _noise(rng, img.shape, 3.0)
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return img, np.array(boxes, np.float64).reshape(-1, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def generate(root: str | Path, spec: SyntheticSpec, processes: int | None = None) -> Path:
    """Write ``spec`` into ``root/<key>/{images,labels}`` (KITTI) once; later calls reuse it.

    The set is built in a private temporary folder and renamed into place, so an interrupted run never
    leaves a half-written cache that a later run would trust, and concurrent jobs (a sweep, DDP ranks)
    generating the same set do not collide: the first to finish wins, the others discard their copy.
    """
    out = Path(root) / f"synthetic_{spec.width}x{spec.height}_s{spec.seed}_n{spec.num_images}_{spec.key()}"
    if (out / "spec.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    images = [tmp / "images" / f"{i:06d}.jpg" for i in range(spec.num_images)]
    for i, boxes in rendered(spec, images, f"synthetic faces (seed {spec.seed})", processes):
        lines = [f"face 0.00 0 0.00 {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f} 0 0 0 0 0 0 0" for b in boxes]
        (tmp / "labels" / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same set first (or a stale incomplete folder)
        if not (out / "spec.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
            return out
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated %d synthetic images in %s", spec.num_images, out)
    return out


def generate_widerface(root: str | Path, splits: dict[str, SyntheticSpec], events: int = 3,
                       invalid_fraction: float = 0.1, processes: int | None = None) -> Path:
    """Write synthetic faces in WIDER FACE's official layout under ``root``: ``WIDER_<split>/images/<n>--Event<n>/
    *.jpg`` and ``wider_face_split/wider_face_<split>_bbx_gt.txt`` (``x y w h blur expression illumination
    invalid occlusion pose``, the ``0 0 0 ...`` placeholder for an image without faces). A ``invalid_fraction``
    of the faces is flagged invalid, and faces smaller than 4 px appear when ``spec.min_face`` allows them, so
    the real parser's ignore paths are exercised. Written once: ``root/.complete`` marks a finished set and records
    what it was made from (a set interrupted before it is written again whole); a finished set made from anything
    else is an error, never passed off as the set asked for."""
    root = Path(root)
    made_from = json.loads(json.dumps({**{s: asdict(sp) for s, sp in splits.items()}, "events": events,
                                       "invalid_fraction": invalid_fraction}))  # as the marker reads back
    if (root / ".complete").is_file():
        try:
            found = json.loads((root / ".complete").read_text())
        except ValueError:
            found = None
        if found == made_from:
            return root
        raise ValueError(f"{root} holds a synthetic WIDER FACE set made from other settings ({root / '.complete'}: "
                         f"{json.dumps(found)}), not from {json.dumps(made_from)}: give another folder, or remove it")
    (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
    for split, spec in splits.items():
        flags = np.random.default_rng(spec.seed + 1000)
        lines = []
        names = [f"{i % events}--Event{i % events}/{i % events}_Event_{i:06d}.jpg" for i in range(spec.num_images)]
        images = root / f"WIDER_{split}" / "images"
        for event in range(min(events, spec.num_images)):
            (images / f"{event}--Event{event}").mkdir(parents=True, exist_ok=True)
        for i, boxes in rendered(spec, [images / name for name in names], f"synthetic WIDER FACE {split}",
                                 processes):
            lines += [names[i], str(len(boxes))]
            for b in boxes:
                invalid = int(flags.random() < invalid_fraction)
                lines.append(f"{b[0]:.1f} {b[1]:.1f} {b[2] - b[0]:.1f} {b[3] - b[1]:.1f} 0 0 0 {invalid} 0 0 ")
            if not len(boxes):
                lines.append("0 0 0 0 0 0 0 0 0 0 ")
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    (root / ".complete").write_text(json.dumps(made_from, indent=2))
    return root
