"""Post-processing cost per image at 736x416 (a 46x26 grid). Times ``GridBoxDecoder`` (decode + threshold +
clustering) for DBSCAN, NMS and hybrid where every cell passes the coverage threshold (an under-trained model, a
face filling the frame): each cell regressing its own box, or all regressing one face with a per-cell error of
0-20 px; and on a trained model's busy image (12 faces, most cells below the threshold). The maps are
``tests/grid_maps.py``'s, the ones the equality tests against scikit-learn use.
Results: bench_results/clustering.{json,md}.

    python scripts/bench_clustering.py [--reps 30] [--maps 5] [--out bench_results]
"""

from __future__ import annotations

import argparse
import sys
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
}


def time_ms(fn, reps: int) -> float:  # noqa: ANN001
    return interleaved_latency({"decode": fn}, reps=reps, warmup=1)["decode"]["median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--maps", type=int, default=5, help="random maps per case (the median is reported)")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    rows = []
    for case, maker in CASES.items():
        maps = [maker(s) for s in range(args.maps)]
        for clustering in ("dbscan", "nms", "hybrid"):
            dec = GridBoxDecoder(clustering=clustering)
            ms = float(np.median([time_ms(lambda m=m, d=dec: d(m[0], m[1], HW), args.reps) for m in maps]))
            n = float(np.mean([len(dec(m[0], m[1], HW)[0]) for m in maps]))
            rows.append({"case": case, "clustering": clustering, "ms_per_image": ms, "detections": n})
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / "clustering.json", {"machine": machine_record(), "input": "736x416", "rows": rows})
    lines = [f"Machine: {machine_line()}", "", "| case | clustering | ms / image | detections |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['clustering']} | {r['ms_per_image']:.2f} | {r['detections']:.0f} |" for r in rows]
    write_text(out / "clustering.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
