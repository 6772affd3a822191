"""Every artifact of a pipeline timed on its own backend, side by side in one process, calls interleaved, so the
speed ratios in the report hold on a noisy shared machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gridface.inference.backends import ModelBackend, load_backend
from gridface.utils.machine import machine_record
from gridface.utils.timing import interleaved_latency


def network_size(path: Path, input_hw: tuple[int, int]) -> dict[str, int]:
    """Parameters and MACs of a checkpoint's network at ``input_hw`` (torch-pruning's counter)."""
    from gridface.module import GridBoxModule
    from gridface.pruning.pruner import count_macs_params

    macs, params = count_macs_params(GridBoxModule.from_checkpoint(path).net.eval(), input_hw)
    return {"params": params, "macs": macs}


def source_checkpoint(backend: ModelBackend) -> Path | None:
    """The checkpoint an exported model came from (its metadata says), for its parameter and MAC counts."""
    from gridface.contract import read_metadata

    if backend.format == "checkpoint":
        return backend.path
    source = read_metadata(backend.path).get("source_checkpoint")
    return Path(source) if source and Path(source).is_file() else None


def benchmark_artifacts(artifacts: dict[str, Path], batches: list[int], reps: int, warmup: int,
                        threads: int | None = None) -> dict[str, Any]:
    """Median and p90 ms per call and images/s of each artifact at its deployment size, for every batch size."""
    backends = {name: load_backend(path, threads=threads) for name, path in artifacts.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, backend in backends.items():
        source = source_checkpoint(backend)
        rows[name] = {"path": str(backend.path), "format": backend.format, "input_hw": list(backend.input_hw),
                      "file_mb": backend.path.stat().st_size / 2**20,
                      **(network_size(source, backend.input_hw) if source else {}), "latency": {}}
    rng = np.random.default_rng(0)
    for batch in batches:
        inputs = {name: rng.random((batch, 3, *b.input_hw), dtype=np.float32) for name, b in backends.items()}
        calls = {name: (lambda b=b, x=inputs[name]: b.run(x)) for name, b in backends.items()}
        for name, lat in interleaved_latency(calls, reps, warmup).items():
            rows[name]["latency"][str(batch)] = {**lat, "images_per_s": 1000 * batch / lat["median_ms"]}
    return {"machine": machine_record(), "batches": list(batches), "reps": reps, "threads": threads,
            "artifacts": rows}
