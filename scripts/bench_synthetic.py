"""Synthetic data at scale: how fast ``gridface.data.synthetic`` renders one image (one process, per size) and writes
a whole WIDER-layout set (``generate_widerface``) per process count. Results go to ``<out>/synthetic.{json,md}``
with the CPU, its ISA and the generator version.

    python scripts/bench_synthetic.py [--images 2000] [--processes 1 2] [--out bench_results]

It uses only the generator's public functions, so ``PYTHONPATH=<another tree>/src`` measures another version of
the generator on the same machine, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from gridface.data import synthetic
from gridface.data.synthetic import SyntheticSpec, generate_widerface, image_rng, render_image
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record

# bench_gpu.py's WIDER-layout images, and the built-in set's default size
SIZES = {
    "1024x700": SyntheticSpec(width=1024, height=700, min_faces=1, max_faces=12, min_face=3.0, small_face=24.0,
                              small_fraction=0.3, max_face_frac=0.45),
    "256x160": SyntheticSpec(),
}


def render_ms(spec: SyntheticSpec, n: int) -> float:
    """Median ms to render and JPEG-encode one image (q95, as the generator writes them), one thread."""
    times = []
    for i in range(n):
        t = time.perf_counter()
        img, _ = render_image(image_rng(spec.seed, i), spec)
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=whole_number(1), default=2000,
                    help="images of the 1024x700 set written per process count")
    ap.add_argument("--processes", type=whole_number(1), nargs="+", default=[1, 2])
    ap.add_argument("--render", type=whole_number(1), default=40, help="images timed one by one per size")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    version = synthetic.GENERATOR_VERSION
    results: dict = {"machine": machine_line(), **machine_record(), "generator_version": version,
                     "render_ms": {k: render_ms(spec, args.render) for k, spec in SIZES.items()}, "sets": []}
    for processes in args.processes:
        spec = dataclasses.replace(SIZES["1024x700"], num_images=args.images)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            root = generate_widerface(Path(tmp), {"train": spec}, processes=processes)
            seconds = time.perf_counter() - t
            mb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e6
        results["sets"].append({"images": args.images, "processes": processes, "seconds": seconds,
                                "images_per_s": args.images / seconds, "jpeg_mb": mb})
        print(f"generator v{version}: {args.images} images 1024x700, {processes} processes: {seconds:.1f} s")

    out = Path(args.out)
    write_json(out / "synthetic.json", results)
    lines = [f"# Synthetic data, generator version {version}", "", results["machine"], "",
             "| render + JPEG, one image, one process | ms |", "| --- | ---: |",
             *(f"| {k} | {v:.1f} |" for k, v in results["render_ms"].items()), "",
             "| generate_widerface 1024x700 | processes | seconds | images/s | JPEG MB |",
             "| --- | ---: | ---: | ---: | ---: |",
             *(f"| {s['images']} images | {s['processes']} | {s['seconds']:.1f} | {s['images_per_s']:.0f} | "
               f"{s['jpeg_mb']:.0f} |" for s in results["sets"])]
    write_text(out / "synthetic.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
