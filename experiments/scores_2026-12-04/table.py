"""The before/after table of run.sh: per mini_val image the faces (valid ground-truth boxes) and the boxes
gridface.infer wrote with their score range, then AP50 from gridface.evaluate (every box ranked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def faces(gt_file: Path) -> dict[str, tuple[int, int]]:
    """image stem -> (all boxes, boxes not flagged invalid), from the WIDER text layout."""
    lines = gt_file.read_text().split("\n")
    out, i = {}, 0
    while i < len(lines) and lines[i].strip():
        name, n = lines[i].strip(), int(lines[i + 1])
        rows = [r.split() for r in lines[i + 2: i + 2 + max(n, 1)]][:n]
        out[Path(name).stem] = (n, sum(r[7] == "0" for r in rows))
        i += 2 + max(n, 1)
    return out


def boxes(folder: Path) -> dict[str, list[float]]:
    return {p.stem: [float(line.split()[-1]) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted((folder / "labels").rglob("*.txt"))}


def main(t: str, mini_val: str) -> None:
    t, m = Path(t), Path(mini_val)
    gt = faces(m / "wider_face_val_bbx_gt.txt")
    before, after = boxes(t / "infer_before"), boxes(t / "infer_after")
    point = json.loads((t / "threshold.json").read_text())
    summary = json.loads((t / "infer_after" / "summary.json").read_text())
    print(f"score_threshold {point['score_threshold']:.4f} (F1-best on the checkpoint's {point['images']} "
          f"validation images: F1 {point['F1']:.3f}, precision {point['precision']:.3f}, recall "
          f"{point['recall']:.3f}); infer after: score={summary['score']}, confidence_threshold="
          f"{summary['confidence_threshold']}\n")
    print("| image | faces (valid / all) | boxes before | scores before | boxes after | scores after |")
    print("| --- | --- | --- | --- | --- | --- |")
    rng = lambda s: f"{min(s):.3f}–{max(s):.3f}" if s else "—"  # noqa: E731
    tb = ta = 0
    for stem in sorted(gt):
        b, a = before.get(stem, []), after.get(stem, [])
        tb, ta = tb + len(b), ta + len(a)
        print(f"| {stem} | {gt[stem][1]} / {gt[stem][0]} | {len(b)} | {rng(b)} | {len(a)} | {rng(a)} |")
    print(f"| **all {len(gt)}** | {sum(v[1] for v in gt.values())} / {sum(v[0] for v in gt.values())} | {tb} | "
          f"{rng(sum(before.values(), []))} | {ta} | {rng(sum(after.values(), []))} |\n")
    print("| evaluation (gridface.evaluate, every box ranked) | AP50 | mAP | AR |")
    print("| --- | --- | --- | --- |")
    for name, label in (("eval_before", "before: main, score = aggregate_cov"),
                        ("eval_after", "after: score = confidence (default)"),
                        ("eval_after_aggregate", "after: postprocess.score=aggregate"),
                        ("val_aggregate", "its own synthetic val (300 images), score = aggregate"),
                        ("val_confidence", "its own synthetic val (300 images), score = confidence")):
        if not (t / name / "metrics.json").is_file():
            continue
        v = json.loads((t / name / "metrics.json").read_text())["metrics"]
        print(f"| {label} | {v['AP50']:.4f} | {v['mAP']:.4f} | {v['AR']:.4f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
