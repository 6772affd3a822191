"""Where ONNX Runtime spends its time: per operator type, from its own profiler, for each model given.
Shows, for instance, how much of an INT8 model is int8 convolution and how much is float or layout work.

    .venv/bin/python scripts/profile_ort.py model.onnx model_int8.onnx [--runs 8 --threads 2]

The input size is each model's own (its static input shape); --width/--height set it for a model whose height and
width are dynamic.

Results: bench_results/profile_ort.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gridface.contract import ONNX_INPUT
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record


def input_hw(model: str, sess: ort.InferenceSession, width: int | None, height: int | None) -> tuple[int, int]:
    """The model's own input height and width; ``--height/--width`` only where the model leaves them dynamic."""
    shape = next(i for i in sess.get_inputs() if i.name == ONNX_INPUT).shape  # [N, 3, H, W]
    h, w = (d if isinstance(d, int) else None for d in shape[2:])
    h, w = h or height, w or width
    if h is None or w is None:
        raise SystemExit(f"{model}: its input size is dynamic ({shape}); give --height and --width")
    return h, w


def profile(model: str, width: int | None, height: int | None, runs: int, threads: int, prefix: str) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    h, w = input_hw(model, sess, width, height)
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    sess.run(None, {ONNX_INPUT: x})  # warm-up, included in the trace: dropped below by taking the last runs
    for _ in range(runs):
        sess.run(None, {ONNX_INPUT: x})
    events = [e for e in json.loads(Path(sess.end_profiling()).read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(events) // (runs + 1)
    totals: collections.Counter = collections.Counter()
    for e in events[per_run:]:
        totals[e["args"]["op_name"]] += e["dur"]
    total_us = sum(totals.values())
    return {"model": model, "input": f"{w}x{h}", "ms_per_run": total_us / runs / 1e3,
            "share": {op: t / total_us for op, t in totals.most_common()}}


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--width", type=int, default=None, help="only for a model whose input width is dynamic")
    ap.add_argument("--height", type=int, default=None, help="only for a model whose input height is dynamic")
    ap.add_argument("--runs", type=whole_number(1), default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    for model in args.models:
        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [profile(m, args.width, args.height, args.runs, args.threads, str(Path(tmp) / f"p{i}"))
                for i, m in enumerate(args.models)]
    write_json(Path(args.out) / "profile_ort.json", {"machine": machine_record(), "threads": args.threads,
                                                     "runs": args.runs, "models": rows})
    lines = [f"Machine: {machine_line()}", "",
             f"Operator kernel time per run, batch 1, {args.threads} threads, {args.runs} runs", ""]
    for r in rows:
        lines += [f"- {r['model']} ({r['input']}): {r['ms_per_run']:.1f} ms; " +
                  ", ".join(f"{op} {share:.1%}" for op, share in r["share"].items() if share >= 0.001)]
    write_text(Path(args.out) / "profile_ort.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
