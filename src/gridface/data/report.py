"""What ``check_data`` reports about a split: counts, face sizes (as a histogram picture) and problems."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridface.data.check import ImageCheck, boxes_outside
from gridface.data.problems import DataProblems
from gridface.utils.io import atomic_path

# face-height bins (px): where GridBox's 16-px cells and the usual min_face cut-offs fall
HEIGHT_BINS = (0, 4, 8, 16, 32, 64, 128, 256, 512, 1e9)


def bin_labels() -> list[str]:
    return [f"{int(a)}-{int(b)}" if b < 1e9 else f">={int(a)}" for a, b in zip(HEIGHT_BINS[:-1], HEIGHT_BINS[1:],
                                                                               strict=True)]


def split_stats(checks: Sequence[ImageCheck], input_hw: tuple[int, int] | None) -> dict[str, Any]:
    """Counts over the usable images; face heights in original pixels and, with ``input_hw``, in network-input
    pixels after the letterbox (what the 16-px grid sees)."""
    ok = [c for c in checks if c.size is not None]
    heights, input_heights, ignored = [], [], 0
    crossing = 0  # boxes partly outside their image: clipped to it in training (wholly outside: a reported problem)
    for c in ok:
        s = c.sample
        w_img, h_img = c.size
        beyond = (s.boxes[:, 0] < 0) | (s.boxes[:, 1] < 0) | (s.boxes[:, 2] > w_img) | (s.boxes[:, 3] > h_img)
        crossing += int((beyond & ~boxes_outside(s.boxes, c.size)).sum())
        h = s.boxes[:, 3] - s.boxes[:, 1]
        kept = ~s.ignore
        ignored += int(s.ignore.sum())
        heights.append(h[kept])
        if input_hw:
            input_heights.append(h[kept] * min(input_hw[0] / h_img, input_hw[1] / w_img))
    heights_all = np.concatenate(heights) if heights else np.zeros(0)
    stats: dict[str, Any] = {
        "images_listed": len(checks), "images_usable": len(ok), "images_skipped": len(checks) - len(ok),
        "images_without_faces": sum(int((~c.sample.ignore).sum() == 0) for c in ok),
        "faces": int(len(heights_all)), "ignored_faces": ignored, "boxes_crossing_the_border": crossing,
        "face_height_px": dict(zip(bin_labels(), np.histogram(heights_all, HEIGHT_BINS)[0].tolist(), strict=True)),
    }
    if ok:
        sizes = np.array([c.size for c in ok])
        stats["image_width_range"] = [int(sizes[:, 0].min()), int(sizes[:, 0].max())]
        stats["image_height_range"] = [int(sizes[:, 1].min()), int(sizes[:, 1].max())]
    if input_hw:
        ih = np.concatenate(input_heights) if input_heights else np.zeros(0)
        stats["input_size"] = [int(input_hw[1]), int(input_hw[0])]
        stats["face_height_input_px"] = dict(zip(bin_labels(), np.histogram(ih, HEIGHT_BINS)[0].tolist(),
                                                 strict=True))
    return stats


def plot_face_sizes(path: str | Path, stats: dict[str, dict[str, Any]]) -> Path:
    """One bar chart per split: faces by height, original and network-input pixels side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stats), figsize=(6 * len(stats), 4), squeeze=False)
    labels = bin_labels()
    x = np.arange(len(labels))
    for ax, (split, st) in zip(axes[0], stats.items(), strict=True):
        ax.bar(x - 0.2, list(st["face_height_px"].values()), 0.4, label="original image")
        if "face_height_input_px" in st:
            w, h = st["input_size"]
            ax.bar(x + 0.2, list(st["face_height_input_px"].values()), 0.4, label=f"network input {w}x{h}")
        ax.set_xticks(x, labels, rotation=45)
        ax.set_xlabel("face height (px)")
        ax.set_ylabel("faces")
        ax.set_title(f"{split}: {st['faces']} faces, {st['ignored_faces']} ignored, {st['images_usable']} images")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def markdown(title: str, stats: dict[str, dict[str, Any]], problems: DataProblems, examples: int = 20) -> str:
    lines = [f"# {title}", "", "| split | images | usable | skipped | without faces | faces | ignored faces |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for split, st in stats.items():
        lines.append(f"| {split} | {st['images_listed']} | {st['images_usable']} | {st['images_skipped']} | "
                     f"{st['images_without_faces']} | {st['faces']} | {st['ignored_faces']} |")
    for split, st in stats.items():
        lines += ["", f"## {split}: face heights", "", "| px | " + " | ".join(st["face_height_px"]) + " |",
                  "| --- |" + " ---: |" * len(st["face_height_px"]),
                  "| original | " + " | ".join(str(v) for v in st["face_height_px"].values()) + " |"]
        if "face_height_input_px" in st:
            w, h = st["input_size"]
            lines.append(f"| input {w}x{h} | " + " | ".join(str(v) for v in st["face_height_input_px"].values()) + " |")
    summary = problems.summary(examples)
    lines += ["", f"## Problems: {summary['total']}", ""]
    if not summary["total"]:
        lines.append("None found.")
    for kind, n in sorted(summary["counts"].items()):
        lines += [f"### {kind}: {n}", ""] + [f"- `{e}`" for e in summary["examples"][kind]]
        if n > examples:
            lines.append(f"- ... and {n - examples} more (all of them in report.json)")
        lines.append("")
    lines += ["", "![face sizes](face_sizes.png)", ""]
    return "\n".join(lines)
