"""WIDER FACE evaluation speed (issue 3): the vectorised evaluator against a literal loop-by-loop port of
the official tool, side by side on the full validation predictions. Writes bench_results/widerface.{json,md}.

    python scripts/bench_widerface.py [--preds DIR] [--gt DIR] [--skip-reference]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridface.evaluation.widerface import evaluate_predictions, load_ground_truth, load_predictions  # noqa: E402
from gridface.utils.io import write_json, write_text  # noqa: E402
from gridface.utils.machine import machine_line, machine_record  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "widerface"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preds", default=str(DATA / "preds_yolov7face"))
    ap.add_argument("--gt", default=str(DATA / "val_gt"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    if not Path(args.preds).is_dir():
        sys.exit(f"predictions not found at {args.preds}; pass --preds and --gt")

    t0 = time.perf_counter()
    gt = load_ground_truth(args.gt)
    t1 = time.perf_counter()
    preds = load_predictions(args.preds)
    t2 = time.perf_counter()
    res = evaluate_predictions(preds, gt)
    t3 = time.perf_counter()
    out = {"images": len(gt), "faces": int(sum(len(b) for b in gt.boxes)),
           "ap": {s: r.ap for s, r in res.items()},
           "seconds_load_gt": t1 - t0, "seconds_load_predictions": t2 - t1, "seconds_evaluate": t3 - t2,
           "seconds_total": t3 - t0}
    if not args.skip_reference:
        from tests.widerface_reference import evaluate_reference

        t4 = time.perf_counter()
        ref = evaluate_reference(preds, gt)
        out["reference_seconds_evaluate"] = time.perf_counter() - t4
        out["reference_ap"] = ref
        out["speedup_evaluate"] = out["reference_seconds_evaluate"] / out["seconds_evaluate"]
    write_json(Path(args.out) / "widerface.json", {"machine": machine_record(), **out})
    rows = [f"| {k} | {v} |" for k, v in out.items()]
    write_text(Path(args.out) / "widerface.md",
               f"Machine: {machine_line()}\n\n| measure | value |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
