"""What pruning did: per-layer widths, parameters, MACs, side-by-side CPU latency, and AP."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gridface.pruning.pruner import count_macs_params
from gridface.utils.io import write_json, write_text
from gridface.utils.timing import interleaved_latency


def layer_table(before: Mapping[str, list[int]], after: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    """Kept / total output channels of every convolution (widths ``[in, out]`` or ``[in, out, groups]``;
    batch norms are ``[features]``)."""
    return [{"layer": name, "kept": after[name][1], "total": shape[1]}
            for name, shape in before.items() if len(shape) >= 2 and name in after]


def torch_latency(nets: Mapping[str, nn.Module], input_hw: Sequence[int], batch: int = 1, reps: int = 10,
                  warmup: int = 2) -> dict[str, dict]:
    """Eager PyTorch FP32 CPU latency of each network on the same random batch."""
    x = torch.rand(batch, 3, int(input_hw[0]), int(input_hw[1]))

    def caller(net: nn.Module) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return net(x)
        return call

    return interleaved_latency({name: caller(net.eval()) for name, net in nets.items()}, reps, warmup)


def size_summary(net: nn.Module, input_hw: Sequence[int]) -> dict[str, int]:
    macs, params = count_macs_params(net, input_hw)
    return {"params": params, "macs": macs}


def write_prune_report(out_dir: Path, report: dict[str, Any]) -> str:
    """``prune_report.json`` and ``prune_report.md`` (atomically); returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "prune_report.json", report)
    md = to_markdown(report)
    write_text(out_dir / "prune_report.md", md)
    return md


def _fmt(v: Any, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def to_markdown(report: dict[str, Any]) -> str:
    b, a = report["before"], report["after"]
    lat = report.get("latency") or {}
    ap = report.get("ap50") or {}
    lines = [
        f"# Pruning report: {Path(report['source_checkpoint']).name} → {Path(report['pruned_checkpoint']).name}",
        "",
        f"Pruning: `{report['spec_summary']}`",
        "",
        "| | before | after | after / before |",
        "|---|---:|---:|---:|",
        f"| parameters | {b['params']:,} | {a['params']:,} | {a['params'] / b['params']:.3f} |",
        f"| MACs at {report['input_hw'][1]}×{report['input_hw'][0]} | {b['macs'] / 1e9:.2f} G | "
        f"{a['macs'] / 1e9:.2f} G | {a['macs'] / b['macs']:.3f} |",
    ]
    if lat:
        hw = lat["input_hw"]
        lines.append(f"| CPU latency at {hw[1]}×{hw[0]}, batch {lat['batch']}, median (p90) | "
                     f"{lat['before']['median_ms']:.1f} ms ({lat['before']['p90_ms']:.1f}) | "
                     f"{lat['after']['median_ms']:.1f} ms ({lat['after']['p90_ms']:.1f}) | "
                     f"{lat['after']['median_ms'] / lat['before']['median_ms']:.3f} |")
    if ap:
        lines += ["", f"AP50 on {ap.get('dataset', 'the validation set')} ({ap.get('images', '?')} images): "
                  f"before pruning {_fmt(ap.get('before'))}, right after pruning {_fmt(ap.get('pruned'))}, "
                  f"after retraining {_fmt(ap.get('retrained'))}."]
    if report.get("warnings"):
        lines += ["", *[f"**Warning:** {w}" for w in report["warnings"]]]
    lines += ["", "| layer | kept / total |", "|---|---:|"]
    lines += [f"| {r['layer']} | {r['kept']} / {r['total']} |" for r in report["layers"]]
    return "\n".join(lines) + "\n"
