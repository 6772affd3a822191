"""The pipeline's report: one row per artifact (size, deployed speed, accuracy, change against the unpruned
checkpoint) as Markdown and as a self-contained HTML page, an accuracy-against-deployed-latency chart and a grid
of annotated sample images."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from gridface.utils.io import atomic_path, write_json, write_text
from gridface.workflow.artifacts import ARTIFACTS
from gridface.workflow.manifest import StageRecord

ACCURACY = (("AP50", "AP50"), ("mAP", "COCO mAP"), ("wider_easy", "WIDER easy"), ("wider_medium", "WIDER medium"),
            ("wider_hard", "WIDER hard"))


def load_json(record: StageRecord | None, output: str) -> dict[str, Any] | None:
    if record is None or record.status != "done" or output not in record.outputs:
        return None
    return json.loads(Path(record.outputs[output]["path"]).read_text())


def artifact_rows(records: dict[str, StageRecord]) -> list[dict[str, Any]]:
    """Every artifact with what was measured of it; a skipped one carries the reason."""
    bench = load_json(records.get("benchmark"), "benchmark") or {"artifacts": {}, "batches": []}
    batches = [str(b) for b in bench.get("batches", [])]
    base = None
    rows = []
    for name, (stage, _, backend) in ARTIFACTS.items():
        made = records.get(stage)
        if made is None:
            continue
        row: dict[str, Any] = {"artifact": name, "backend": backend, "status": made.status, "reason": made.reason}
        metrics = (load_json(records.get(f"evaluate_{name}"), "metrics") or {}).get("metrics", {})
        row.update({key: metrics.get(key) for key, _ in ACCURACY})
        b = bench["artifacts"].get(name)
        if b:
            row.update(params=b.get("params"), macs=b.get("macs"), file_mb=b["file_mb"], input_hw=b["input_hw"])
            lat = b["latency"]
            row["latency_ms"] = lat[batches[0]]["median_ms"] if batches else None
            row["images_per_s"] = lat[batches[-1]]["images_per_s"] if batches else None
            row["throughput_batch"] = int(batches[-1]) if batches else None
        if name == "checkpoint":
            base = row
        rows.append(row)
    for row in rows:
        if base and row.get("AP50") is not None and base.get("AP50") is not None:
            row["d_AP50_points"] = 100 * (row["AP50"] - base["AP50"])
        if base and row.get("latency_ms") and base.get("latency_ms"):
            row["speedup"] = base["latency_ms"] / row["latency_ms"]
    return rows


def fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


COLUMNS = ("artifact", "backend", "params (M)", "GMACs", "file (MB)", "latency b1 (ms)", "images/s", "× unpruned",
           "AP50", "Δ AP50 (points)", "COCO mAP", "WIDER easy / medium / hard")


def first_sentence(text: str | None) -> str:
    text = (text or "").strip()
    return text.split(". ", 1)[0].rstrip(".") if text else "no reason recorded"


def table_cells(row: dict[str, Any]) -> list[str]:
    if row["status"] != "done":
        return [row["artifact"], row["backend"], f"skipped: {first_sentence(row['reason'])}",
                *["–"] * (len(COLUMNS) - 3)]
    wider = " / ".join(fmt(row.get(k)) for k in ("wider_easy", "wider_medium", "wider_hard"))
    return [row["artifact"], row["backend"], fmt(row.get("params") and row["params"] / 1e6, ".2f"),
            macs_at(row), fmt(row.get("file_mb"), ".1f"),
            fmt(row.get("latency_ms"), ".2f"), fmt(row.get("images_per_s"), ".1f"), fmt(row.get("speedup"), ".1f"),
            fmt(row.get("AP50")), fmt(row.get("d_AP50_points"), "+.2f"), fmt(row.get("mAP")),
            wider if row.get("wider_easy") is not None else "–"]


def macs_at(row: dict[str, Any]) -> str:
    """GMACs with the input size they were counted at (a prune report counts them at its own size)."""
    hw = row.get("input_hw")
    return fmt(row.get("macs") and row["macs"] / 1e9, ".2f") + (f" at {hw[1]}×{hw[0]}" if hw else "")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def headline(rows: list[dict[str, Any]]) -> list[str]:
    """The figures a user checks first: the deployed INT8 model against the unpruned checkpoint, FP32 ONNX = ckpt."""
    by = {r["artifact"]: r for r in rows if r["status"] == "done"}
    lines = []
    if "onnx_int8" in by and "checkpoint" in by:
        r, base = by["onnx_int8"], by["checkpoint"]
        lines.append(f"Pruned, retrained, INT8 (ONNX Runtime): AP50 {fmt(r.get('AP50'))} "
                     f"({fmt(r.get('d_AP50_points'), '+.2f')} points against the unpruned checkpoint's "
                     f"{fmt(base.get('AP50'))}) at {fmt(r.get('speedup'), '.1f')}× its PyTorch eager "
                     f"speed ({fmt(r.get('latency_ms'), '.2f')} ms against {fmt(base.get('latency_ms'), '.2f')}"
                     f" ms per image, batch 1); at batch {r.get('throughput_batch')}, "
                     f"{fmt(r.get('images_per_s'), '.1f')} against {fmt(base.get('images_per_s'), '.1f')} images/s"
                     f" ({fmt(ratio(r.get('images_per_s'), base.get('images_per_s')), '.1f')}×).")
    if "onnx_fp32" in by and "retrained" in by:
        a, b = by["onnx_fp32"].get("AP50"), by["retrained"].get("AP50")
        if a is not None and b is not None:
            lines.append(f"ONNX FP32 AP50 {a:.4f} against its checkpoint's {b:.4f} (difference {a - b:+.4f}).")
    return lines


def plot_accuracy_latency(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    points = [r for r in rows if r["status"] == "done" and r.get("AP50") is not None and r.get("latency_ms")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(points):  # a legend, not labels on the points: pruned models sit close together
        deployed = not r["backend"].startswith("PyTorch")
        ax.scatter(r["latency_ms"], r["AP50"], s=70, marker="o" if deployed else "s", color=f"C{i}",
                   edgecolor="black" if deployed else "none", label=f"{r['artifact']} ({r['backend']})")
    # below the axes, in two columns: beside them, long backend names squeezed the plot into a third of the width
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ... in plain numbers
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency per image, batch 1 (ms, log scale); circles: deployed backends")
    ax.set_ylabel("AP50")
    ax.set_title("Accuracy against deployed latency")
    ax.grid(True, which="both", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_samples(path: Path, image_dir: Path, limit: int) -> Path | None:
    images = sorted(image_dir.glob("**/*.jpg"))[:limit]
    if not images:
        return None
    import matplotlib

    from gridface.data.images import read_image_rgb

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(images))
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes.ravel(), images, strict=False):
        ax.imshow(read_image_rgb(p))
        ax.set_title(p.stem, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def skip_reasons(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["artifact"]: r.get("reason") or "no reason recorded" for r in rows if r["status"] != "done"}


def markdown(rows: list[dict[str, Any]], lines: list[str], machine: dict[str, Any] | None, pictures: dict,
             network: str | None = None) -> str:
    out = ["# gridface pipeline report", ""]
    if network:
        out += [f"Network: `network={network}` (the GridBox head on that backbone).", ""]
    if machine:
        out += [f"Measured on {machine.get('cpu')}, {machine.get('cores')} cores, ISA "
                f"{'/'.join(machine.get('isa') or []) or 'baseline'}; every latency in one process, calls "
                "interleaved.", ""]
    out += [f"- {line}" for line in lines] + [""]
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    out += ["", "Latency: batch 1; images/s: the largest benchmarked batch; × unpruned: against the unpruned "
            "checkpoint in PyTorch eager; Δ AP50 against the unpruned checkpoint.", ""]
    out += [f"- {name} skipped: {reason}" for name, reason in skip_reasons(rows).items()]
    out += [""] if skip_reasons(rows) else []
    out += [f"![{title}]({p.name})" for title, p in pictures.items() if p]
    return "\n".join(out) + "\n"


def html_page(rows: list[dict[str, Any]], lines: list[str], machine: dict[str, Any] | None, pictures: dict,
              network: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r)) + "</tr>" for r in rows)
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'>" for t, p in pictures.items() if p)
    where = (f"<p>Measured on {html.escape(str(machine.get('cpu')))}, {machine.get('cores')} cores, ISA "
             f"{html.escape('/'.join(machine.get('isa') or []) or 'baseline')}.</p>") if machine else ""
    where = (f"<p>Network: network={html.escape(network)}</p>" if network else "") + where
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    skipped = "".join(f"<li>{html.escape(n)} skipped: {html.escape(r)}</li>" for n, r in skip_reasons(rows).items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>gridface pipeline report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"
            f"</style></head><body><h1>gridface pipeline report</h1>{where}<ul>{items}</ul><table><tr>{head}</tr>"
            f"{body}</table><ul>{skipped}</ul>{imgs}</body></html>\n")


def write_pipeline_report(folder: Path, records: dict[str, StageRecord], samples: int,
                          network: str | None = None, outdated: dict[str, str] | None = None) -> dict[str, Path]:
    """``report.md``, ``report.html`` (pictures inlined), ``rows.json`` and the PNG charts, into ``folder``;
    ``network`` names the backbone the pipeline trained; ``outdated``: the stages left out of this run
    (``pipeline.stages``) whose outputs no longer follow from their inputs, said first (their rows describe earlier
    outputs; only the console said so)."""
    rows = artifact_rows(records)
    bench = load_json(records.get("benchmark"), "benchmark") or {}
    infer = records.get("infer")
    pictures = {"Accuracy against deployed latency": plot_accuracy_latency(folder / "accuracy_latency.png", rows)}
    if infer is not None and infer.status == "done":
        sample_dir = Path(infer.outputs["summary"]["path"]).parent / "images"
        pictures["Sample detections (deployed INT8 model)"] = plot_samples(folder / "samples.png", sample_dir, samples)
    lines = headline(rows)
    if outdated:
        lines.insert(0, "Out of date (left out of pipeline.stages; their rows describe earlier outputs): "
                        + "; ".join(f"{name} ({why})" for name, why in outdated.items())
                        + ". Run the pipeline without pipeline.stages= to bring them up to date.")
    outputs = {"report_md": write_text(folder / "report.md",
                                       markdown(rows, lines, bench.get("machine"), pictures, network)),
               "report_html": write_text(folder / "report.html",
                                         html_page(rows, lines, bench.get("machine"), pictures, network))}
    write_json(folder / "rows.json", rows)
    outputs["rows"] = folder / "rows.json"
    outputs.update({p.stem: p for p in pictures.values() if p})
    return outputs
