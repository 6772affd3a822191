"""Post-processing cost per image at 736x416 (a 46x26 grid). Times ``GridBoxDecoder`` (decode + threshold +
clustering) for DBSCAN, NMS and hybrid where every cell passes the coverage threshold (an under-trained model, a
face filling the frame): each cell regressing its own box, or all regressing one face with a per-cell error of
0-20 px; and on a trained model's busy image (12 faces, most cells below the threshold). The maps are
``tests/grid_maps.py``'s, the ones the equality tests against scikit-learn use.
Results: bench_results/clustering.{json,md}.

    python scripts/bench_clustering.py [--reps 30] [--maps 5] [--against <git rev>] [--out bench_results]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.grid_maps import HW, busy_image_maps, one_face_maps, random_boxes_maps  # noqa: E402

from gridface.postprocess import GridBoxDecoder  # noqa: E402
from gridface.utils.io import write_json, write_text  # noqa: E402
from gridface.utils.machine import machine_line, machine_record  # noqa: E402
from gridface.utils.timing import interleaved_latency  # noqa: E402

CASES = {
    "all 1196 cells pass, each its own 40-200 px box": random_boxes_maps,
    "all 1196 cells pass, one face, 0 px apart": lambda seed: one_face_maps(seed, 0.0),
    "all 1196 cells pass, one face, 3 px apart": lambda seed: one_face_maps(seed, 3.0),
    "all 1196 cells pass, one face, 8 px apart": lambda seed: one_face_maps(seed, 8.0),
    "all 1196 cells pass, one face, 20 px apart": lambda seed: one_face_maps(seed, 20.0),
    "12 faces (encoder targets)": busy_image_maps,
    "all 1196 cells pass, untrained head (small scattered boxes)": lambda seed: (
        np.full((1, 1, HW[0] // 16, HW[1] // 16), 0.5, np.float32),
        np.random.default_rng(seed).normal(0, 0.5, (1, 4, HW[0] // 16, HW[1] // 16)).astype(np.float32)),
}


def decoder_class_at(rev: str) -> type:
    """``GridBoxDecoder`` as it was at git revision ``rev``, to time side by side with the checkout's."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/gridface/postprocess.py"],
                           capture_output=True, text=True)
    if shown.returncode:
        raise ValueError(f"--against {rev}: {shown.stderr.strip() or 'git show failed'}")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / f"postprocess_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"postprocess_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GridBoxDecoder


def time_ms(fns: dict, reps: int) -> dict[str, float]:
    """Median ms of each function, calls interleaved so that all see the same machine state."""
    return {k: v["median_ms"] for k, v in interleaved_latency(fns, reps=reps, warmup=1).items()}


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=whole_number(1), default=30)
    ap.add_argument("--maps", type=whole_number(1), default=5, help="random maps per case (the median is reported)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--against", help="a git revision: time its decoder side by side (a 'before' column)")
    args = ap.parse_args()
    before_cls = decoder_class_at(args.against) if args.against else None
    rows = []
    for case, maker in CASES.items():
        maps = [maker(s) for s in range(args.maps)]
        for clustering in ("dbscan", "nms", "hybrid"):
            dec = GridBoxDecoder(clustering=clustering)
            decoders = {"after": dec, **({"before": before_cls(clustering=clustering)} if before_cls else {})}
            per_map = [time_ms({k: (lambda m=m, d=d: d(m[0], m[1], HW)) for k, d in decoders.items()}, args.reps)
                       for m in maps]
            row = {"case": case, "clustering": clustering,
                   "ms_per_image": float(np.median([t["after"] for t in per_map])),
                   "detections": float(np.mean([len(dec(m[0], m[1], HW)[0]) for m in maps]))}
            if before_cls:
                row["before_ms_per_image"] = float(np.median([t["before"] for t in per_map]))
            rows.append(row)
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / "clustering.json", {"machine": machine_record(), "input": "736x416", "against": args.against,
                                         "rows": rows})
    if before_cls:
        lines = [f"Machine: {machine_line()}", "",
                 f"| case | clustering | {args.against} ms | ms / image | detections |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['clustering']} | {r['before_ms_per_image']:.2f} | {r['ms_per_image']:.2f} | "
                  f"{r['detections']:.0f} |" for r in rows]
    else:
        lines = [f"Machine: {machine_line()}", "",
                 "| case | clustering | ms / image | detections |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['clustering']} | {r['ms_per_image']:.2f} | {r['detections']:.0f} |"
                  for r in rows]
    write_text(out / "clustering.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
