"""Collect pruning reports (a sweep's folders) into an accuracy-versus-latency chart and a table, and name
the fastest model within an AP budget:

    python -m gridface.pruning.collect outputs/prune/multiruns/<stamp> [more folders or reports] \
        --max-ap-drop 1.0 --out outputs/prune/sweep

A report's accuracy is its AP after retraining when it has one (``retrained=``), else right after pruning;
the reference is the unpruned model's AP from the same report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gridface.utils.errors import user_errors
from gridface.utils.io import atomic_path, write_json, write_text


def find_reports(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("prune_report.json")))
        else:
            raise FileNotFoundError(f"{p}: no such report or folder")
    if not found:
        raise FileNotFoundError(f"no prune_report.json under {[str(p) for p in paths]}")
    return found


def summarise(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    ap = report.get("ap50") or {}
    lat = report.get("latency") or {}
    if "before" not in ap or "median_ms" not in lat.get("after", {}):
        raise ValueError(f"{path}: report has no AP or latency "
                         "(run gridface.prune with evaluate=true and latency.reps>0)")
    if ap["before"] is None or ap.get("pruned") is None:  # NaN in the report: a split without faces
        raise ValueError(f"{path}: its AP is undefined (null: the evaluated split has no faces); evaluate on a split "
                         "with faces")
    retrained = ap.get("retrained")
    return {"report": str(path), "setting": report["spec_summary"], "params_ratio": report["params_ratio"],
            "macs_ratio": report["macs_ratio"], "latency_ms": lat["after"]["median_ms"],
            "latency_ratio": lat["ratio"], "baseline_ms": lat["before"]["median_ms"], "ap_before": ap["before"],
            "ap": retrained if retrained is not None else ap["pruned"],
            "ap_kind": "retrained" if retrained is not None else "pruned", "checkpoint": report["pruned_checkpoint"],
            "retrained_checkpoint": ap.get("retrained_checkpoint")}


def choose(rows: list[dict[str, Any]], max_ap_drop: float) -> dict[str, Any] | None:
    """The lowest latency ratio whose AP50 is within ``max_ap_drop`` points of its unpruned model."""
    ok = [r for r in rows if (r["ap_before"] - r["ap"]) * 100 <= max_ap_drop]
    return min(ok, key=lambda r: r["latency_ratio"]) if ok else None


def plot(rows: list[dict[str, Any]], best: dict[str, Any] | None, max_ap_drop: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base_ap = max(r["ap_before"] for r in rows)
    ax.scatter([1.0], [base_ap], marker="*", s=160, color="black", label="unpruned", zorder=3)
    for kind, color in (("pruned", "tab:orange"), ("retrained", "tab:blue")):
        sel = [r for r in rows if r["ap_kind"] == kind]
        if sel:
            ax.scatter([r["latency_ratio"] for r in sel], [r["ap"] for r in sel], color=color, zorder=3,
                       label=f"{kind} (AP50 {'after retraining' if kind == 'retrained' else 'right after pruning'})")
    for r in rows:
        ax.annotate(f"{r['setting'].split()[0]}, params {r['params_ratio']:.2f}", (r["latency_ratio"], r["ap"]),
                    textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(base_ap - max_ap_drop / 100, ls="--", color="grey", lw=1, label=f"AP budget: -{max_ap_drop} point")
    if best:
        ax.scatter([best["latency_ratio"]], [best["ap"]], s=220, facecolors="none", edgecolors="green", lw=2,
                   label="fastest within budget", zorder=4)
    ax.set_xlabel("CPU latency relative to the unpruned model (PyTorch eager, same process)")
    ax.set_ylabel("AP50")
    ax.set_title("Pruning: accuracy versus latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def collect(paths: list[Path], max_ap_drop: float, out_dir: Path) -> dict[str, Any]:
    rows = sorted((summarise(p) for p in find_reports(paths)), key=lambda r: r["latency_ratio"])
    best = choose(rows, max_ap_drop)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, best, max_ap_drop, out_dir / "accuracy_vs_latency.png")
    lines = ["| setting | params | MACs | latency | AP50 | AP50 unpruned | checkpoint |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['setting']} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | {r['latency_ratio']:.3f} "
              f"({r['latency_ms']:.0f} ms) | {r['ap']:.4f} ({r['ap_kind']}) | {r['ap_before']:.4f} | "
              f"{r['retrained_checkpoint'] or r['checkpoint']} |" for r in rows]
    verdict = (f"Fastest within {max_ap_drop} AP50 point: **{best['setting']}**, latency {best['latency_ratio']:.3f}× "
               f"the unpruned model, AP50 {best['ap']:.4f} vs {best['ap_before']:.4f}: "
               f"{best['retrained_checkpoint'] or best['checkpoint']}"
               if best else f"No model is within {max_ap_drop} AP50 point of its unpruned model.")
    md = "\n".join(["# Pruning sweep", "", verdict, "", *lines, "", "![](accuracy_vs_latency.png)", ""])
    write_text(out_dir / "sweep.md", md)
    result = {"max_ap_drop": max_ap_drop, "best": best, "rows": rows}
    write_json(out_dir / "sweep.json", result)
    print(md)
    return result


@user_errors("pruning.collect")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders or prune_report.json files")
    parser.add_argument("--max-ap-drop", type=float, default=1.0, help="AP50 points (default 1.0)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first path)")
    args = parser.parse_args(argv)
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    collect(args.paths, args.max_ap_drop, out)


if __name__ == "__main__":
    main()
