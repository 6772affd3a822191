"""FP32, ONNX Runtime's uint8 INT8 and TensorRT's symmetric int8 QDQ model of one checkpoint, side by side: AP50 on
the checkpoint's validation split (the evaluate stage, in ONNX Runtime) and ONNX Runtime batch-1 latency, in one run.

    PYTHONPATH=src .venv/bin/python scripts/bench_int8.py --checkpoint <.ckpt> --out experiments/int8_<date>
        [--threads 2] [--reps 50] [export overrides ..., e.g. export.calibration.method=minmax]

Writes ``<out>/int8_schemes.{json,md}`` (with the CPU named) and keeps the three models in ``<out>/models/``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from gridface.inference.backends import load_backend
from gridface.stages.evaluate import run as evaluate_run
from gridface.stages.export import run as export_run
from gridface.utils.hydra import stage_config
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record


def latency_ms(model: Path, threads: int, reps: int) -> float:
    """Median wall time of one batch-1 call, after warm-up."""
    backend = load_backend(model, threads=threads)
    x = np.random.default_rng(0).random((1, 3, *backend.input_hw), dtype=np.float32)
    for _ in range(5):
        backend.run(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        backend.run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=whole_number(1), default=50)
    ap.add_argument("overrides", nargs="*", help="export overrides, e.g. export.calibration.method=entropy")
    args = ap.parse_args()
    out, models = Path(args.out), Path(args.out) / "models"

    def export(model: str | Path, option: str) -> dict:
        return export_run(stage_config("export", [f"model={model}", f"export={option}", f"output_dir={models}",
                                                  "export.deepstream=false", *args.overrides], output_dir=models))

    ort = export(args.checkpoint, "onnx_int8")
    trt = export(ort["onnx"], "onnx_int8_trt")
    rows = []
    for name, model in (("FP32", ort["onnx"]), ("INT8 uint8 (ONNX Runtime)", ort["onnx_int8"]),
                        ("INT8 symmetric QDQ (TensorRT)", trt["onnx_int8"])):
        folder = out / "evaluate" / Path(model).stem
        metrics = evaluate_run(stage_config("evaluate", [f"model={model}", "split=val", "num_workers=0",
                                                         f"threads={args.threads}", "plots=false"],
                                            output_dir=folder))["metrics"]
        rows.append({"model": name, "file": Path(model).name, "AP50": metrics["AP50"],
                     "latency_ms": latency_ms(Path(model), args.threads, args.reps)})
    for r in rows:
        r["d_AP50_points"] = 100 * (r["AP50"] - rows[0]["AP50"])
    cpu = machine_line()
    write_json(out / "int8_schemes.json", {"checkpoint": args.checkpoint, "machine": machine_record(),
                                           "threads": args.threads, "reps": args.reps, "overrides": args.overrides,
                                           "rows": rows})
    lines = [f"# INT8 schemes of {args.checkpoint}", "", f"CPU: {cpu}; ONNX Runtime, {args.threads} threads, batch 1, "
             f"median of {args.reps}; AP50 on the checkpoint's val split", "",
             "| model | file | AP50 | Δ AP50 (points) | latency ms |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['file']} | {r['AP50']:.4f} | {r['d_AP50_points']:+.2f} | {r['latency_ms']:.2f} |"
              for r in rows]
    write_text(out / "int8_schemes.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
