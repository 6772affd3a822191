"""Shared test helpers: compose the real Hydra config with small, fast overrides."""

from __future__ import annotations

import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gridface.utils.hydra import config_dir

TINY = [
    "dataset.train.num_images=24",
    "dataset.val.num_images=8",
    "dataset.batch_size=4",
    "dataset.num_workers=0",
    "print_config=false",
]


def compose_config(name: str, output_dir: Path, cache_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """An entry point's real config (train, prune, export, evaluate, infer) writing under the test's folders."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
    return cfg


def compose_train(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    return compose_config("train", tmp_path / "out", tmp_path / "cache", overrides)


def run_smoke_pipeline(root: Path, *args: str) -> tuple[str, float]:
    """``python -m gridface.pipeline experiment=pipeline_smoke`` as a user runs it, with ``GRIDFACE_ROOT=root``:
    its stdout and seconds."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "GRIDFACE_ROOT": str(root), "NO_ALBUMENTATIONS_UPDATE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gridface.pipeline", "experiment=pipeline_smoke", *args],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, seconds


def overfit_fixed_batch(batch: dict, seed: int, steps: int, lr: float = 1e-3, loss_config: dict | None = None,
                        model_config: dict | None = None) -> list[dict[str, float]]:
    """The one way a test asserts learning: a fresh network (``seed``) trained on one fixed batch (no augmentation)
    by Adam at a constant learning rate, deterministic algorithms on; the loss terms of every step. The margins
    the tests assert were measured over many seeds with ``scripts/learning_margins.py``, which calls this."""
    import torch

    from gridface.loss import GridBoxLoss
    from gridface.model import GridBoxNet

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        net = GridBoxNet(**(model_config or {}))
        loss_fn = GridBoxLoss(**(loss_config or {}))
        opt = torch.optim.Adam(net.parameters(), lr)
        history = []
        for _ in range(steps):
            out = loss_fn(net(batch["image"]), batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            history.append({k: v.item() for k, v in out.items()})
        return history
    finally:
        torch.use_deterministic_algorithms(deterministic)


def take_every_stamp(parent: Path, seconds: int = 300) -> set[str]:
    """Makes ``parent/<date>_<time>`` for each second from now on, as other runs or sweeps started then would:
    a run or sweep started in them must make a folder of its own (``<date>_<time>_2``). The names made."""
    now = time.time()
    taken = {time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now + s)) for s in range(-1, seconds)}
    for name in taken:
        (parent / name).mkdir(parents=True)
    return taken


def made_beside(parent: Path, taken: set[str]) -> Path:
    """The one folder under ``parent`` that is not in ``taken``, which must be a taken second's ``_2``; the taken
    ones must still be empty."""
    made = [p for p in parent.iterdir() if p.name not in taken]
    assert len(made) == 1 and made[0].name.endswith("_2") and made[0].name[:-2] in taken, made
    assert not [p for p in parent.iterdir() if p.name in taken and any(p.iterdir())], "wrote into a taken folder"
    return made[0]


def write_mjpeg_avi(path: Path, frames: list, rate: int, header_frames: int | None = None) -> Path:
    """An MJPEG AVI of BGR ``frames`` whose header says what a test wants (OpenCV's writer refuses a rate of 0 or
    one a camera's clock gives, and odd sizes it rounds down): ``rate`` frames per second, ``header_frames``
    frames (default: as many as there are)."""
    import struct

    import cv2

    def chunk(fourcc: bytes, data: bytes) -> bytes:
        return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)

    def riff_list(kind: bytes, data: bytes) -> bytes:
        return b"LIST" + struct.pack("<I", len(data) + 4) + kind + data

    h, w = frames[0].shape[:2]
    n = len(frames) if header_frames is None else header_frames
    avih = struct.pack("<IIIIIIIIII4I", int(1e6 / rate) if rate else 0, 0, 0, 0x10, n, 0, 1, 0, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, rate, 0, n, 0, 0xFFFFFFFF, 0, 0, 0,
                       w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    movi, index, offset = b"", b"", 4
    for frame in frames:
        jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(jpeg))
        movi += chunk(b"00dc", jpeg)
        offset = 4 + len(movi)
    body = (b"AVI " + riff_list(b"hdrl", chunk(b"avih", avih) + riff_list(b"strl", chunk(b"strh", strh)
                                                                          + chunk(b"strf", strf)))
            + riff_list(b"movi", movi) + chunk(b"idx1", index))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path
