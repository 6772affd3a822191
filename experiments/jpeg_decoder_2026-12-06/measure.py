"""The strict JPEG decoder against OpenCV's, side by side in one process on the real WIDER images of mini_val:
pixels (max absolute difference), ms per image single-threaded, and the device path's 1/8-scale data check; then the
new label rules over the official WIDER val ground truth (problems by kind). Prints a Markdown record.

    OMP_NUM_THREADS=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH=src .venv/bin/python \
        experiments/jpeg_decoder_2026-12-06/measure.py ../shared/data/widerface
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from gridface.data.images import check_jpeg_data, read_image_bgr
from gridface.data.parsers import read_widerface_txt
from gridface.data.problems import DataProblems


def ms_per_image(fn, datas: list[bytes], reps: int = 5) -> float:
    fn(datas[0])  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        for d in datas:
            fn(d)
    return (time.perf_counter() - start) / (reps * len(datas)) * 1000


def main(root: Path) -> None:
    cv2.setNumThreads(1)
    files = sorted((root / "mini_val" / "images").rglob("*.jpg"))
    datas = [f.read_bytes() for f in files]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    flags = Path("/proc/cpuinfo").read_text().split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    print(f"# JPEG decoding, {len(files)} mini_val images\n\nCPU: {model}, {' '.join(isa)}; Python "
          f"{platform.python_version()}, OpenCV {cv2.__version__}, simplejpeg {simplejpeg.__version__}\n")
    diff = max(int(np.abs(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR).astype(int)
                          - read_image_bgr(f).astype(int)).max()) for d, f in zip(datas, files, strict=True))
    print(f"max |gridface reader - cv2.imdecode| over all pixels: {diff}\n")
    print("| decode, one thread | ms per image |\n| --- | ---: |")
    for name, fn in [("cv2.imdecode", lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)),
                     ("simplejpeg strict (the CPU path)", lambda d: simplejpeg.decode_jpeg(d, "BGR", strict=True)),
                     ("check_jpeg_data, 1/8 scale grey (the device path)", lambda d: check_jpeg_data(d))]:
        print(f"| {name} | {ms_per_image(fn, datas):.2f} |")
    problems = DataProblems(quiet=True)
    gt = root / "val_gt" / "wider_face_val_bbx_gt.txt"
    samples = read_widerface_txt(gt, gt.parent, problems=problems, check_images=False)
    print(f"\nWIDER val ground truth: {len(samples)} images, {sum(len(s.boxes) for s in samples)} boxes, problems "
          f"{problems.counts()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
