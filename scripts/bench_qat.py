"""QAT against post-training calibration, side by side (issue 22 item 4): FP32 and symmetric PTQ (export=onnx_int8_trt)
of a checkpoint, the QAT INT8 model of ``experiment=qat`` from it, and the same checkpoint retrained as long without
fake quantization (the fair FP32 control); AP50 on the val split (the evaluate stage, in ONNX Runtime) and ONNX
Runtime batch-1 latency, in one run.

    PYTHONPATH=src .venv/bin/python scripts/bench_qat.py --checkpoint <.ckpt> --qat <qat best.ckpt>
        --retrained <fp32 control best.ckpt> --out experiments/int8_<date>/qat [--threads 2] [--reps 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_int8 import latency_ms

from gridface.stages.evaluate import run as evaluate_run
from gridface.stages.export import run as export_run
from gridface.utils.hydra import stage_config
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ("--checkpoint", "--qat", "--retrained", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=whole_number(1), default=50)
    args = ap.parse_args()
    out = Path(args.out)

    def export(model: str, option: str, folder: str) -> dict:
        d = out / "models" / folder
        return export_run(stage_config("export", [f"model={model}", f"export={option}", f"output_dir={d}",
                                                  "export.deepstream=false"], output_dir=d))

    ptq = export(args.checkpoint, "onnx_int8_trt", "ptq")
    qat = export(args.qat, "onnx_int8_trt", "qat")
    control = export(args.retrained, "onnx", "fp32_retrained")
    rows = []
    for name, model in (("FP32", ptq["onnx"]), ("INT8 symmetric PTQ (TensorRT)", ptq["onnx_int8"]),
                        ("FP32 retrained, same budget", control["onnx"]), ("INT8 QAT (TensorRT)", qat["onnx_int8"])):
        folder = out / "evaluate" / f"{Path(model).parent.name}_{Path(model).stem}"
        metrics = evaluate_run(stage_config("evaluate", [f"model={model}", "split=val", "num_workers=0",
                                                         f"threads={args.threads}", "plots=false"],
                                            output_dir=folder))["metrics"]
        rows.append({"model": name, "file": str(Path(model).relative_to(out)), "AP50": metrics["AP50"],
                     "latency_ms": latency_ms(Path(model), args.threads, args.reps)})
    for r in rows:
        r["d_AP50_points"] = 100 * (r["AP50"] - rows[0]["AP50"])
    write_json(out / "qat.json", {"checkpoint": args.checkpoint, "qat": args.qat, "retrained": args.retrained,
                                  "qat_onnx_max_abs_diff": qat["onnx_int8_max_abs_diff"],
                                  "machine": machine_record(), "threads": args.threads, "reps": args.reps,
                                  "rows": rows})
    lines = [f"CPU: {machine_line()}; ONNX Runtime, {args.threads} threads, batch 1, median of {args.reps}; AP50 on "
             "the checkpoint's val split", "", "| model | file | AP50 | Δ AP50 vs FP32 (points) | latency ms |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['file']} | {r['AP50']:.4f} | {r['d_AP50_points']:+.2f} | {r['latency_ms']:.2f} |"
              for r in rows]
    lines += ["", f"QAT ONNX vs PyTorch QAT, max abs diff: {qat['onnx_int8_max_abs_diff']}"]
    write_text(out / "qat.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
