"""Inference pipeline efficiency (issue 5): on a folder of JPEGs (about 1024x700), end-to-end images/s of
``gridface.infer`` (read, letterbox, model, clustering, writing labels) against the model's own images/s
on the same images already letterboxed in memory, measured in one run. Results: bench_results/infer.{json,md}.

    python scripts/bench_infer.py --model model.onnx [--model model_int8.onnx] [--images 120]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from gridface.data.dataset import iter_network_inputs
from gridface.data.synthetic import SyntheticSpec, generate
from gridface.infer import run as infer_run
from gridface.inference.backends import load_backend
from gridface.utils.io import write_json, write_text


def model_only(model: str, images: list[Path], batch: int, threads: int) -> float:
    """The network alone on pre-letterboxed batches: the ceiling the pipeline is compared with."""
    backend = load_backend(model, threads=threads)
    x = np.stack(list(iter_network_inputs(images, backend.input_hw)))
    backend.run(x[:batch])
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        backend.run(x[i: i + batch])
    return len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate(tmp, SyntheticSpec(num_images=args.images, width=1024, height=700, seed=11, max_faces=10))
        files = sorted((folder / "images").glob("*.jpg"))
        for model in args.model:
            model_ips = model_only(model, files, args.batch, args.threads)
            cfg = OmegaConf.create({
                "model": model, "source": str(folder / "images"), "output_dir": str(Path(tmp) / "out"),
                "device": "cpu", "threads": args.threads, "batch_size": args.batch, "frame_stride": 1,
                "max_frames": None, "prefetch": 16, "read_workers": 2, "postprocess": {}, "save_images": False,
                "save_kitti": True, "save_json": True, "save_wider": False, "paths": {"output_dir": tmp}})
            summary = infer_run(cfg)
            rows.append({"model": Path(model).name, "images": len(files), "model_only_images_per_s": model_ips,
                         "end_to_end_images_per_s": summary["images_per_s"],
                         "ratio": summary["images_per_s"] / model_ips, "faces": summary["faces"]})
            print(rows[-1], flush=True)
    write_json(Path(args.out) / "infer.json", rows)
    lines = ["| model | images | model-only img/s | end-to-end img/s | ratio | faces |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['images']} | {r['model_only_images_per_s']:.2f} | "
              f"{r['end_to_end_images_per_s']:.2f} | {r['ratio']:.3f} | {r['faces']} |" for r in rows]
    write_text(Path(args.out) / "infer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
