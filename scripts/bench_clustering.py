"""Post-processing cost per image at 736x416 (a 46x26 grid), worst case: every cell passes the coverage threshold
(an under-trained model, or a busy image). Times ``GridBoxDecoder`` (decode + threshold + clustering) for DBSCAN,
NMS and hybrid on random maps whose boxes overlap their neighbours the way a real GridBox output's do, and on
the maps of a realistic image (a few faces, most cells below the threshold).
Results: bench_results/clustering.{json,md}.

    python scripts/bench_clustering.py [--reps 30] [--out bench_results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gridface.postprocess import GridBoxDecoder
from gridface.targets import GridBoxTargetEncoder
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record
from gridface.utils.timing import interleaved_latency

HW = (416, 736)


def worst_case_maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every cell above the threshold; each cell regresses a face of 40-200 px around itself (random)."""
    rng = np.random.default_rng(seed)
    h, w = HW[0] // 16, HW[1] // 16
    cov = rng.uniform(0.01, 1.0, (1, 1, h, w)).astype(np.float32)
    half = rng.uniform(20, 100, (1, 1, h, w)) / 35.0
    bbox = np.concatenate([half + rng.normal(0, 0.1, (1, 1, h, w)) for _ in range(4)], 1).astype(np.float32)
    return cov, bbox


def realistic_maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's own targets for 12 faces of 20-160 px: what a trained model outputs on a busy image."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(20, 160, (12, 1))
    xy = rng.uniform([0, 0], [HW[1] - 160, HW[0] - 160], (12, 2))
    boxes = np.concatenate([xy, xy + size], 1)
    t = GridBoxTargetEncoder()(boxes, np.zeros(12), HW)
    return t["cov"][None].astype(np.float32), t["bbox"][None].astype(np.float32)


def time_ms(fn, reps: int) -> float:  # noqa: ANN001
    return interleaved_latency({"decode": fn}, reps=reps, warmup=1)["decode"]["median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    rows = []
    for case, maker in (("all 1196 cells pass", worst_case_maps), ("12 faces (encoder targets)", realistic_maps)):
        maps = [maker(s) for s in range(5)]
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
