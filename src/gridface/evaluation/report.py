"""Evaluation reports: JSON for machines, a markdown table for people, PR curves as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gridface.utils.io import atomic_path, write_json, write_text


def markdown_report(title: str, metrics: dict[str, float], recall_by_size: dict[str, dict] | None = None) -> str:
    lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    if recall_by_size:
        settings = list(recall_by_size)
        buckets = list(next(iter(recall_by_size.values())))
        lines += ["", "Recall by face height (all detections kept):", "",
                  "| face height | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
        for b in buckets:
            cells = []
            for s in settings:
                hit, total = recall_by_size[s][b]
                cells.append(f"{hit / total:.3f} ({hit}/{total})" if total else "-")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pr_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Path:
    """``curves``: name -> (recall, precision, ap). Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    for name, (rec, prec, ap) in curves.items():
        ax.plot(rec, prec, label=f"{name} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def write_report(out_dir: str | Path, title: str, metrics: dict[str, float], details: dict[str, Any],
                 recall_by_size: dict[str, dict] | None = None) -> None:
    out = Path(out_dir)
    write_json(out / "metrics.json", {"metrics": metrics, **details, "recall_by_size": recall_by_size})
    write_text(out / "metrics.md", markdown_report(title, metrics, recall_by_size))
