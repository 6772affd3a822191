"""Backbones side by side (issue 23): per ``network=`` choice, unpruned and pruned at --prune-ratio, the
parameters, GMACs at 736x416 (torch-pruning's count), ONNX Runtime FP32 and INT8 latency at batch 1 and
images/s at batch 8 on this CPU. Results: <out>/backbones.{json,md}.

    python scripts/bench_backbones.py --out experiments/backbones_2026-12-04 [--backbones resnet18 mobilenet_v3_large]
    python scripts/bench_backbones.py --out experiments/backbones_2026-12-05 --train   # + AP50 (long)

The speed rows are kept in <out>/speed.json and reused by a later call with the same settings on
the same kind of machine (its machine record), so the timing
can run on an idle machine first and the (long, resumable) training after it. Each pipeline runs in
<work>/<backbone> (checkpoints stay out of <out>); a rerun skips the stages it finished.

Speed depends only on the shapes, so the speed rows time untrained networks (a ratio-pruned network has the
same widths whatever its weights). With --train each backbone also runs ``gridface.pipeline network=<x>``
with ``pipeline.prune.ratio=<ratio>`` (train, prune, retrain, export, evaluate) and the table gains AP50 of the
trained checkpoint and of the pruned + retrained one, and an accuracy-versus-INT8-latency chart naming the
Pareto front. The training budget is whatever --train-args set: say it beside the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def variants(name: str, ratio: float, hw: tuple[int, int]) -> dict[str, Any]:
    """The backbone's untrained GridBoxNet and its copy pruned at ``ratio`` (ratio mode, per layer)."""
    import torch

    from gridface.model import GridBoxNet
    from gridface.pruning.pruner import PruneSpec, prune_network

    torch.manual_seed(0)
    nets = {"unpruned": GridBoxNet(backbone=name).eval()}
    if ratio:
        pruned = GridBoxNet(backbone=name).eval()
        pruned.load_state_dict(nets["unpruned"].state_dict())
        nets[f"pruned {ratio:g}"] = prune_network(pruned, PruneSpec(mode="ratio", ratio=ratio), hw)
    return nets


def ort_speed(fp32: Path, int8: Path, hw: tuple[int, int], iters: int, threads: int) -> dict[str, float]:
    """FP32 and INT8 sessions timed in alternation (shared-machine noise hits both alike)."""
    import onnxruntime as ort

    from gridface.contract import ONNX_INPUT
    from gridface.utils.timing import interleaved_latency

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for k, p in (("fp32", fp32), ("int8", int8))}
    out: dict[str, float] = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
        lat = interleaved_latency({k: (lambda s=s, x=x: s.run(None, {ONNX_INPUT: x})) for k, s in sessions.items()},
                                  reps=iters, warmup=2)
        for k, r in lat.items():
            if batch == 1:
                out[f"{k}_b1_ms"] = r["median_ms"]
            else:
                out[f"{k}_b8_img_s"] = batch / r["median_ms"] * 1e3
    return out


def speed_rows(names: list[str], ratio: float, hw: tuple[int, int], iters: int, threads: int,
               work: Path) -> list[dict[str, Any]]:
    import torch

    from gridface.data.sources import synthetic
    from gridface.export.onnx_export import export_onnx, verify_onnx
    from gridface.export.quantize import quantize_int8
    from gridface.pruning.pruner import count_macs_params

    torch.set_num_threads(threads)
    calib = [s.image for s in synthetic(str(work / "calib"), num_images=16, seed=7, width=hw[1], height=hw[0])]
    check = np.random.default_rng(1).random((1, 3, *hw), dtype=np.float32)
    rows = []
    for name in names:
        for variant, net in variants(name, ratio, hw).items():
            macs, params = count_macs_params(net, hw)
            fp32 = export_onnx(net, work / f"{name}_{variant}.onnx".replace(" ", "_"), hw)
            diff = max(verify_onnx(fp32, net, check, atol=1e-3).values())
            int8 = quantize_int8(fp32, fp32.with_name(fp32.stem + "_int8.onnx"), calib, hw)
            row = {"backbone": name, "variant": variant, "params": params, "gmacs": macs / 1e9,
                   "onnx_max_abs_diff": diff, **ort_speed(fp32, int8, hw, iters, threads)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def cached_speed_rows(names: list[str], ratio: float, hw: tuple[int, int], iters: int, threads: int,
                      out: Path) -> list[dict[str, Any]]:
    """The speed rows of <out>/speed.json where they were measured with these settings on a machine like this one
    (same CPU, ISA, cores and library versions), the missing ones measured."""
    from gridface.utils.io import write_json
    from gridface.utils.machine import machine_record

    settings = {"prune_ratio": ratio, "input_hw": list(hw), "iters": iters, "threads": threads}
    here = machine_record()
    cache = out / "speed.json"
    old = json.loads(cache.read_text()) if cache.exists() else {}
    rows = old.get("rows", []) if old.get("settings") == settings and old.get("machine") == here else []
    missing = [n for n in names if not any(r["backbone"] == n for r in rows)]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            rows += speed_rows(missing, ratio, hw, iters, threads, Path(tmp))
        write_json(cache, {"settings": settings, "machine": here, "rows": rows})
    return [r for n in names for r in rows if r["backbone"] == n]


def train_rows(names: list[str], ratio: float, train_args: list[str], work: Path) -> dict[tuple[str, str], dict]:
    """From ``gridface.pipeline network=<x>``: AP50 of the trained checkpoint, of the pruned + retrained one and of
    the latter's ONNX Runtime INT8 export, and the wall time of each pipeline call."""
    acc: dict[tuple[str, str], dict] = {}
    for name in names:
        run_dir = work / name
        cmd = [sys.executable, "-m", "gridface.pipeline", f"network={name}", f"pipeline.prune.ratio={ratio}",
               f"pipeline.name={name}", f"hydra.run.dir={run_dir}", *train_args]
        print(" ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        rows = {r["artifact"]: r for r in json.loads((run_dir / "report" / "rows.json").read_text())}
        acc[(name, "unpruned")] = {"ap50": rows["checkpoint"]["AP50"], "pipeline_s": wall}
        acc[(name, f"pruned {ratio:g}")] = {"ap50": rows["retrained"]["AP50"], "ap50_int8": rows["onnx_int8"]["AP50"]}
    return acc


def pareto(rows: list[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    """Rows no other row beats on both: lower ``x`` (latency) and higher ``y`` (accuracy)."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r[x], -r[y])):
        if r[y] > best:
            front.append(r)
            best = r[y]
    return front


def plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], path: Path, note: str, hw: tuple[int, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gridface.utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 5))
    pruned = sorted({r["variant"] for r in rows} - {"unpruned"})
    for variant, marker in (("unpruned", "o"), *((v, "s") for v in pruned)):
        sel = [r for r in rows if r["variant"] == variant]
        ax.scatter([r["int8_b1_ms"] for r in sel], [r["ap50"] for r in sel], marker=marker, label=variant, zorder=3)
    for r in rows:
        ax.annotate(r["backbone"], (r["int8_b1_ms"], r["ap50"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.plot([r["int8_b1_ms"] for r in front], [r["ap50"] for r in front], "--", color="green", lw=1,
            label="Pareto front: " + ", ".join(f"{r['backbone']} ({r['variant']})" for r in front))
    ax.set_xscale("log")
    ax.set_xlabel(f"ONNX Runtime INT8 latency, batch 1, {hw[1]}x{hw[0]} (ms, log)")
    ax.set_ylabel("AP50 (gridface.pipeline, at its training size)")
    ax.set_title(f"Backbones: accuracy against deployed latency ({note})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def fmt(value: float | None) -> str:
    return "–" if value is None else format(value, ".3f")


def main() -> None:
    from gridface.model import BACKBONES
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--prune-ratio", type=float, default=0.5, help="0: no pruned rows")
    ap.add_argument("--width", type=int, default=736)
    ap.add_argument("--height", type=int, default=416)
    ap.add_argument("--iters", type=whole_number(1), default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_results/backbones"))
    ap.add_argument("--work", type=Path, default=Path("outputs/bench_backbones"), help="the pipelines' run folders")
    ap.add_argument("--train", action="store_true", help="also train, prune, retrain each backbone (long)")
    ap.add_argument("--train-args", nargs="*", default=[], help="overrides for gridface.pipeline (the budget)")
    args = ap.parse_args()
    hw = (args.height, args.width)

    from gridface.utils.io import write_json, write_text
    from gridface.utils.machine import machine_line, machine_record

    rows = cached_speed_rows(args.backbones, args.prune_ratio, hw, args.iters, args.threads, args.out)
    accuracy = train_rows(args.backbones, args.prune_ratio, args.train_args, args.work) if args.train else {}
    for r in rows:
        r.update({"ap50": None, **accuracy.get((r["backbone"], r["variant"]), {})})
    meta = {"machine": machine_record(), "input": f"{args.width}x{args.height}", "threads": args.threads,
            "iters": args.iters, "prune_ratio": args.prune_ratio,
            "train_args": args.train_args if args.train else None}
    lines = [f"Machine: {machine_line()}; {args.threads} threads; input {args.width}x{args.height}; "
             f"medians of {args.iters} interleaved calls", "",
             "| backbone | variant | params (M) | GMACs | ORT FP32 b1 (ms) | ORT INT8 b1 (ms) | ORT FP32 b8 (img/s) "
             "| ORT INT8 b8 (img/s) | AP50 | AP50 INT8 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['variant']} | {r['params'] / 1e6:.2f} | {r['gmacs']:.2f} | "
              f"{r['fp32_b1_ms']:.1f} | {r['int8_b1_ms']:.1f} | {r['fp32_b8_img_s']:.1f} | {r['int8_b8_img_s']:.1f} | "
              f"{fmt(r['ap50'])} | {fmt(r.get('ap50_int8'))} |" for r in rows]
    scored = [r for r in rows if r["ap50"] is not None]
    if scored:
        front = pareto(scored, "int8_b1_ms", "ap50")
        meta["pareto_front"] = [f"{r['backbone']} ({r['variant']})" for r in front]
        plot(scored, front, args.out / "accuracy_vs_latency.png", " ".join(args.train_args) or "default budget", hw)
        lines += ["", "Pareto front (AP50 against ORT INT8 batch-1 latency): " + ", ".join(meta["pareto_front"]),
                  "", "![](accuracy_vs_latency.png)"]
    write_json(args.out / "backbones.json", {**meta, "rows": rows})
    write_text(args.out / "backbones.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
