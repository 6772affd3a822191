"""Inference pipeline efficiency: end-to-end images/s of ``gridface.infer`` (read, letterbox, model, clustering,
writing) against the model's own images/s on the same images already letterboxed in memory, in one run, at
batch 1 and 8, writing labels and JSON only or annotated images too, from a folder of JPEGs (1024x700) and from
a video of the same frames. Also the cost of each stage in core-ms per image (one thread each), which bounds what
a 2-core machine can reach. Results: bench_results/infer.{json,md}.

    python scripts/bench_infer.py --model model.onnx [--model model_int8.onnx] [--images 120] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from gridface.data.dataset import iter_network_inputs
from gridface.data.images import read_image_rgb
from gridface.data.synthetic import SyntheticSpec, generate
from gridface.data.transforms import letterbox, to_tensor_layout
from gridface.infer import run as infer_run
from gridface.inference.backends import load_backend
from gridface.inference.detector import Detector
from gridface.inference.writers import draw, kitti_lines
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record
from gridface.utils.timing import interleaved_latency


def model_only(model: str, images: list[Path], batch: int, threads: int) -> float:
    """The network alone on pre-letterboxed batches: the ceiling the pipeline is compared with."""
    backend = load_backend(model, threads=threads)
    x = np.stack(list(iter_network_inputs(images, backend.input_hw)))
    backend.run(x[:batch])
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        backend.run(x[i: i + batch])
    return len(x) / (time.perf_counter() - t)


def median_ms(fn, reps: int = 20) -> float:  # noqa: ANN001
    return interleaved_latency({"stage": fn}, reps=reps, warmup=1)["stage"]["median_ms"]


def stage_costs(model: str, files: list[Path]) -> dict[str, float]:
    """Core-ms per image of each stage, each on one thread (the model at 1 thread, batch 8)."""
    det = Detector.load(model, threads=1)
    data, img = files[0].read_bytes(), read_image_rgb(files[0])
    net_img, lb = letterbox(img, det.backend.input_hw)
    x = np.stack([to_tensor_layout(net_img)] * 8)
    cov, bbox = det.backend.run(x[:1])
    dets = det.decode(cov, bbox, [lb])[0]
    annotated = draw(img, dets, det.class_names)
    return {
        "read + JPEG decode (with the truncation check)": median_ms(lambda: read_image_rgb(files[0])),
        "  of which cv2.imdecode alone": median_ms(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), 1)),
        "letterbox to the input size": median_ms(lambda: letterbox(img, det.backend.input_hw)),
        "HWC uint8 -> CHW float": median_ms(lambda: to_tensor_layout(net_img)),
        "model (1 thread, batch 8, per image)": median_ms(lambda: det.backend.run(x), 3) / 8,
        "post-processing (model's clustering)": median_ms(lambda: det.decode(cov, bbox, [lb])),
        "KITTI + JSON lines": median_ms(lambda: kitti_lines(dets, det.class_names)),
        "draw boxes": median_ms(lambda: draw(img, dets, det.class_names)),
        "encode annotated JPEG": median_ms(lambda: cv2.imencode(".jpg", cv2.cvtColor(annotated, cv2.COLOR_BGR2RGB))),
    }


def make_video(files: list[Path], path: Path) -> Path:
    first = cv2.imread(str(files[0]))
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (first.shape[1], first.shape[0]))
    for f in files:
        vw.write(cv2.imread(str(f)))
    vw.release()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting; the best is reported")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    rows, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate(tmp, SyntheticSpec(num_images=args.images, width=1024, height=700, seed=11, max_faces=10))
        files = sorted((folder / "images").glob("*.jpg"))
        video = make_video(files, Path(tmp) / "clip.mp4")
        for model in args.model:
            stages[Path(model).name] = stage_costs(model, files)
            for batch in (1, 8):
                model_ips = max(model_only(model, files, batch, args.threads) for _ in range(args.repeats))
                for save_images in (False, True):
                    for kind, source in (("folder", folder / "images"), ("video", video)):
                        cfg = OmegaConf.create({
                            "model": model, "source": str(source), "output_dir": str(Path(tmp) / "out"),
                            "device": "cpu", "threads": args.threads, "batch_size": batch, "frame_stride": 1,
                            "max_frames": None, "prefetch": 16, "read_workers": 2, "spin": False, "postprocess": {},
                            "save_images": save_images, "save_kitti": True, "save_json": True, "save_wider": False,
                            "paths": {"output_dir": tmp}})
                        runs = [infer_run(cfg) for _ in range(args.repeats)]
                        best = max(runs, key=lambda r: r["images_per_s"])
                        rows.append({"model": Path(model).name, "batch": batch, "source": kind,
                                     "writes": "labels+json+annotated" if save_images else "labels+json",
                                     "images": best["frames"], "model_only_images_per_s": model_ips,
                                     "end_to_end_images_per_s": best["images_per_s"],
                                     "ratio": best["images_per_s"] / model_ips, "faces": best["faces"]})
                        print(rows[-1], flush=True)
    write_json(Path(args.out) / "infer.json", {"machine": machine_record(), "threads": args.threads,
                                               "rows": rows, "stage_core_ms_per_image": stages})
    lines = [f"Machine: {machine_line()}; {args.threads} model threads", "",
             "| model | batch | source | writes | model-only img/s | end-to-end img/s | ratio | faces |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['source']} | {r['writes']} | {r['model_only_images_per_s']:.1f} | "
              f"{r['end_to_end_images_per_s']:.1f} | {r['ratio']:.2f} | {r['faces']} |" for r in rows]
    for model, costs in stages.items():
        lines += ["", f"Stage costs, {model} (core-ms per image, one thread each):", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in costs.items()]
    write_text(Path(args.out) / "infer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
