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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from gridface.contract import read_metadata
from gridface.data.dataset import iter_network_inputs
from gridface.data.images import read_image_bgr
from gridface.data.synthetic import SyntheticSpec, generate
from gridface.data.transforms import to_tensor_layout
from gridface.infer import run as infer_run
from gridface.inference.backends import load_backend
from gridface.inference.detector import Detector
from gridface.inference.writers import draw, kitti_lines
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record
from gridface.utils.timing import interleaved_latency


def model_only(model: str, x: np.ndarray, batch: int, threads: int) -> dict[str, float]:
    """The network alone on the pre-letterboxed images ``x``, images/s: one run at a time on ``threads`` threads,
    and ``threads`` single-threaded runs side by side (what ``gridface.infer``'s ``model_workers`` does). The
    better of the two is the ceiling the pipeline is compared with."""
    starts = range(0, len(x), batch)
    out = {}
    for name, workers, per_run in (("one_run", 1, threads), ("side_by_side", threads, 1)):
        backend = load_backend(model, threads=per_run)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i, b=backend: b.run(x[i: i + batch]), starts[:workers]))  # warm-up
            t = time.perf_counter()
            list(pool.map(lambda i, b=backend: b.run(x[i: i + batch]), starts))
            out[name] = len(x) / (time.perf_counter() - t)
    out["best"] = max(out.values())
    return out


def median_ms(fn, reps: int = 20) -> float:  # noqa: ANN001
    return interleaved_latency({"stage": fn}, reps=reps, warmup=1)["stage"]["median_ms"]


def stage_costs(model: str, files: list[Path]) -> dict[str, float]:
    """Core-ms per image of each stage as ``gridface.infer`` runs it, each on one thread (the model at 1 thread,
    batch 8)."""
    cv2.setNumThreads(1)  # core-ms: OpenCV on one thread, as gridface.infer runs it (opencv_threads=1)
    det = Detector.load(model, threads=1)
    data, img = files[0].read_bytes(), read_image_bgr(files[0])
    net_img, lb = det.prepare(img, "BGR")
    slot = np.empty((3, *det.backend.input_hw), np.float32)
    x = np.stack([to_tensor_layout(net_img)] * 8)
    cov, bbox = det.backend.run(x[:1])
    dets = det.decode(cov, bbox, [lb])[0]
    annotated = draw(img.copy(), dets, det.class_names)
    return {
        "read + JPEG decode (with the truncation check)": median_ms(lambda: read_image_bgr(files[0])),
        "  of which cv2.imdecode alone": median_ms(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), 1)),
        "letterbox to the input size": median_ms(lambda: det.prepare(img, "BGR")),
        "HWC uint8 BGR -> CHW float RGB, into the batch": median_ms(lambda: to_tensor_layout(net_img, out=slot)),
        "model (1 thread, batch 8, per image)": median_ms(lambda: det.backend.run(x), 3) / 8,
        "post-processing (model's clustering)": median_ms(lambda: det.decode(cov, bbox, [lb])),
        "KITTI + JSON lines": median_ms(lambda: kitti_lines(dets, det.class_names)),
        "draw boxes (in place)": median_ms(lambda: draw(annotated, dets, det.class_names)),
        "encode annotated JPEG": median_ms(lambda: cv2.imencode(".jpg", annotated)),
    }


def ceiling(costs: dict[str, float], model_images_per_s: float, annotated: bool, cores: int) -> float:
    """The best end-to-end images/s ``cores`` cores allow with perfect overlap: every core busy, the model
    costing what it does alone (cores x 1000 / its images/s core-ms), each other stage its one-thread cost."""
    other = sum(v for k, v in costs.items() if not k.startswith(("  ", "model"))
                and (annotated or k not in ("draw boxes (in place)", "encode annotated JPEG")))
    return cores * 1000.0 / (cores * 1000.0 / model_images_per_s + other)


def make_video(files: list[Path], path: Path) -> Path:
    first = cv2.imread(str(files[0]))
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (first.shape[1], first.shape[0]))
    for f in files:
        vw.write(cv2.imread(str(f)))
    vw.release()
    return path


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--images", type=whole_number(1), default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=whole_number(1), default=2, help="runs of each setting; the best is reported")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    for model in args.model:  # before a minute of synthetic images, not after
        if not Path(model).is_file():
            raise FileNotFoundError(f"--model {model}: no such file")
    rows, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate(tmp, SyntheticSpec(num_images=args.images, width=1024, height=700, seed=11, max_faces=10))
        files = sorted((folder / "images").glob("*.jpg"))
        video = make_video(files, Path(tmp) / "clip.mp4")
        for model in args.model:
            stages[Path(model).name] = stage_costs(model, files)
            x = np.stack(list(iter_network_inputs(files, tuple(read_metadata(model)["input_hw"]))))
            for batch in (1, 8):
                alone = [model_only(model, x, batch, args.threads) for _ in range(args.repeats)]
                alone = {k: max(a[k] for a in alone) for k in alone[0]}
                model_ips = alone["best"]
                for save_images in (False, True):
                    for kind, source in (("folder", folder / "images"), ("video", video)):
                        cfg = OmegaConf.create({
                            "model": model, "source": str(source), "output_dir": str(Path(tmp) / "out"),
                            "device": "cpu", "threads": max(1, args.threads // 2), "batch_size": batch,
                            "frame_stride": 1,
                            "max_frames": None, "prefetch": 16, "read_workers": 2, "spin": False, "postprocess": {},
                            "model_workers": 2, "opencv_threads": 1,  # configs/infer.yaml's defaults
                            "save_images": save_images, "save_kitti": True, "save_json": True, "save_wider": False,
                            "paths": {"output_dir": tmp}})
                        runs = [infer_run(cfg) for _ in range(args.repeats)]
                        best = max(runs, key=lambda r: r["images_per_s"])
                        best_allowed = ceiling(stages[Path(model).name], model_ips, save_images, args.threads)
                        rows.append({"model": Path(model).name, "batch": batch, "source": kind,
                                     "writes": "labels+json+annotated" if save_images else "labels+json",
                                     "images": best["frames"], "model_only_images_per_s": model_ips,
                                     "model_only_one_run_images_per_s": alone["one_run"],
                                     "model_only_side_by_side_images_per_s": alone["side_by_side"],
                                     "end_to_end_images_per_s": best["images_per_s"],
                                     "ratio": best["images_per_s"] / model_ips,
                                     "ceiling_images_per_s": best_allowed, "ceiling_ratio": best_allowed / model_ips,
                                     "of_ceiling": best["images_per_s"] / best_allowed, "faces": best["faces"]})
                        print(rows[-1], flush=True)
    write_json(Path(args.out) / "infer.json", {"machine": machine_record(), "threads": args.threads,
                                               "rows": rows, "stage_core_ms_per_image": stages})
    lines = [f"Machine: {machine_line()}; {args.threads} model threads", "",
             "| model | batch | source | writes | model-only img/s | end-to-end img/s | ratio | ceiling ratio "
             "| of ceiling | faces |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['source']} | {r['writes']} | {r['model_only_images_per_s']:.1f} | "
              f"{r['end_to_end_images_per_s']:.1f} | {r['ratio']:.2f} | {r['ceiling_ratio']:.2f} | "
              f"{r['of_ceiling']:.2f} | {r['faces']} |" for r in rows]
    lines += ["", "Ceiling: what the cores allow with perfect overlap, the model at its own images/s and every other "
              "stage at its one-thread cost below (core-ms per image)."]
    for model, costs in stages.items():
        lines += ["", f"Stage costs, {model} (core-ms per image, one thread each):", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in costs.items()]
    write_text(Path(args.out) / "infer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
