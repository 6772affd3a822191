"""Deployment speed (issue 4), side by side in one run: latency (median, p90) and images/s at batch 1 and 8,
at 736x416, for PyTorch eager FP32, ONNX Runtime FP32 and ONNX Runtime INT8, for a model and (when given)
its pruned version; peak memory per backend (each runs in its own process). Ratios are against PyTorch
eager FP32 of the unpruned model. Results: bench_results/deploy.{json,md}.

    python scripts/bench_deploy.py [--checkpoint A.ckpt] [--pruned B.ckpt | --prune-ratio 0.7] [--keep-models DIR]

--keep-models keeps the deployed variant's ONNX models as DIR/deploy.onnx and DIR/deploy_int8.onnx, for
``scripts/bench_infer.py`` (``make bench`` chains them): the --pruned checkpoint when given (a retrained one), else
the unpruned --checkpoint, never the un-retrained pruned copy (right for timing the network, but its detections
are garbage, which would time the clustering of a thousand boxes per image instead of the pipeline).

Without --pruned, the model is pruned here with prune=ratio at --prune-ratio (speed depends only on the
shapes, so an un-retrained pruned copy times the same as its retrained version; accuracy comes from the
prune report, not from here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def measure(backend: str, model: str, hw: tuple[int, int], batch: int, iters: int, threads: int) -> dict:
    """Runs in a child process: load, warm up, time ``iters`` calls."""
    import torch

    from gridface.utils.timing import interleaved_latency

    torch.set_num_threads(threads)
    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
    if backend == "torch":
        from gridface.module import GridBoxModule

        net = GridBoxModule.from_checkpoint(model).net.eval() if model.endswith(".ckpt") else None
        if net is None:
            from gridface.model import GridBoxNet

            net = GridBoxNet().eval()
        xt = torch.from_numpy(x)

        def call() -> None:
            with torch.inference_mode():
                net(xt)
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

        def call() -> None:
            sess.run(None, {"input_1": x})
    lat = interleaved_latency({"model": call}, reps=iters, warmup=2)["model"]
    return {"median_ms": lat["median_ms"], "p90_ms": lat["p90_ms"], "images_per_s": batch / lat["median_ms"] * 1e3,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM). ru_maxrss would carry the parent's peak across
    fork+exec, making every child report the driver's memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pruned_copy(checkpoint: str | None, ratio: float, out: Path) -> str:
    """Prune the checkpoint (or an untrained module) with prune=ratio and save it as a checkpoint."""
    from gridface.module import GridBoxModule
    from gridface.pruning.pruner import PruneSpec, prune_module
    from gridface.stages.prune import save_pruned_checkpoint

    module = GridBoxModule.from_checkpoint(checkpoint) if checkpoint else GridBoxModule()
    spec = PruneSpec(mode="ratio", ratio=ratio)
    prune_module(module, spec)
    path = out / "pruned.ckpt"
    save_pruned_checkpoint(module, path, checkpoint or "untrained", spec)
    return str(path)


def export_models(checkpoint: str | None, hw: tuple[int, int], out: Path, name: str) -> dict[str, str]:
    """FP32 ONNX and INT8 QDQ ONNX of the checkpoint (or of an untrained net) at the bench size."""
    from gridface.contract import metadata_path
    from gridface.data.sources import synthetic
    from gridface.export.onnx_export import export_onnx
    from gridface.export.quantize import quantize_int8
    from gridface.module import GridBoxModule
    from gridface.stages.export import model_metadata
    from gridface.utils.io import write_json

    module = GridBoxModule.from_checkpoint(checkpoint) if checkpoint else GridBoxModule()  # (untrained)
    fp32 = export_onnx(module.net.eval(), out / f"{name}.onnx", hw)
    calib = [s.image for s in synthetic(str(out / "calib"), num_images=32, seed=7, width=hw[1], height=hw[0])]
    int8 = quantize_int8(fp32, out / f"{name}_int8.onnx", calib, hw)
    for path, fmt in ((fp32, "onnx_fp32"), (int8, "onnx_int8")):  # what load_backend reads beside a model
        meta = model_metadata(module, checkpoint or "untrained", fmt)
        write_json(metadata_path(path), {**meta, "input_hw": list(hw)})
    return {"torch": checkpoint or "", "onnx_fp32": str(fp32), "onnx_int8": str(int8)}


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--pruned", help="a pruned checkpoint (default: prune --checkpoint at --prune-ratio)")
    ap.add_argument("--prune-ratio", type=float, default=0.7,
                    help="default 0.7: the fastest ratio within 1 AP50 point in experiments/pruning; 0: no pruned rows")
    ap.add_argument("--width", type=int, default=736)
    ap.add_argument("--height", type=int, default=416)
    ap.add_argument("--iters", type=whole_number(1), default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--keep-models", help="keep the deployed variant's FP32 and INT8 ONNX models in this folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    hw = (args.height, args.width)
    for option, path in (("--checkpoint", args.checkpoint), ("--pruned", args.pruned)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path}: no such file")
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["backend"], spec["model"], hw, spec["batch"], args.iters, args.threads)))
        return

    from gridface.contract import metadata_path
    from gridface.utils.io import write_json, write_text
    from gridface.utils.machine import machine_line, machine_record

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"unpruned": export_models(args.checkpoint, hw, Path(tmp), "unpruned")}
        pruned = args.pruned
        if not pruned and args.prune_ratio:
            pruned = pruned_copy(args.checkpoint, args.prune_ratio, Path(tmp))
        if pruned:
            models["pruned"] = export_models(pruned, hw, Path(tmp), "pruned")
        if args.keep_models:
            # an un-retrained pruned copy times right but detects garbage: the pipeline bench needs a real model
            keep = Path(args.keep_models)
            deployed = models["pruned"] if args.pruned else models["unpruned"]
            keep.mkdir(parents=True, exist_ok=True)
            for key, name in (("onnx_fp32", "deploy.onnx"), ("onnx_int8", "deploy_int8.onnx")):
                for src, dst in ((Path(deployed[key]), keep / name),  # the model and its metadata JSON
                                 (metadata_path(deployed[key]), metadata_path(keep / name))):
                    shutil.copyfile(src, dst.with_name(f".{dst.name}.tmp"))
                    os.replace(dst.with_name(f".{dst.name}.tmp"), dst)
        for variant, paths in models.items():
            for backend, key in (("torch", "torch"), ("onnx", "onnx_fp32"), ("onnx", "onnx_int8")):
                model = paths["torch"] if backend == "torch" else paths[key]
                for batch in (1, 8):
                    child = json.dumps({"backend": backend, "model": model, "batch": batch})
                    proc = subprocess.run([sys.executable, __file__, "--child", child, "--iters", str(args.iters),
                                           "--threads", str(args.threads), "--width", str(args.width),
                                           "--height", str(args.height)], capture_output=True, text=True)
                    if proc.returncode:  # its reason, not only "returned non-zero exit status 1"
                        raise RuntimeError(f"the {key} run at batch {batch} of {model} failed:\n"
                                           + "\n".join(proc.stderr.strip().splitlines()[-15:]))
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append({"model": variant, "backend": {"torch": "pytorch_fp32", "onnx_fp32": "ort_fp32",
                                                               "onnx_int8": "ort_int8"}[key], "batch": batch, **r})
                    print(rows[-1], flush=True)
    base = {r["batch"]: r["images_per_s"] for r in rows if r["model"] == "unpruned" and r["backend"] == "pytorch_fp32"}
    for r in rows:
        r["speedup_vs_pytorch_fp32"] = r["images_per_s"] / base[r["batch"]]
    out = Path(args.out)
    speed = {(r["model"], r["backend"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {f"int8_vs_ort_fp32_{m}_b{b}": speed[(m, "ort_int8", b)] / speed[(m, "ort_fp32", b)]
              for m in models for b in (1, 8)}
    if "pruned" in models:
        ratios.update({f"pruned_int8_vs_unpruned_pytorch_b{b}": speed[("pruned", "ort_int8", b)]
                       / speed[("unpruned", "pytorch_fp32", b)] for b in (1, 8)})
    meta = {"machine": machine_record(), "input": f"{args.width}x{args.height}", "threads": args.threads,
            "checkpoint": args.checkpoint,
            "pruned": args.pruned or (f"--prune-ratio {args.prune_ratio} of the "
                                      + ("checkpoint" if args.checkpoint else "untrained network") if pruned else None)}
    write_json(out / "deploy.json", {**meta, "ratios": ratios, "rows": rows})
    lines = [f"Machine: {machine_line()}; {args.threads} threads", "",
             "| model | backend | batch | median ms | p90 ms | images/s | peak RSS MB | x PyTorch FP32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['speedup_vs_pytorch_fp32']:.2f} |" for r in rows]
    lines += ["", *[f"- {k}: **{v:.2f}x**" for k, v in ratios.items()]]
    write_text(out / "deploy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
