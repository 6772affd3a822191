"""Latency measured the way noisy shared machines need: alternated calls, median and p90."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved_latency(fns: Mapping[str, Callable[[], Any]], reps: int = 10, warmup: int = 2) -> dict[str, dict]:
    """Median and p90 milliseconds of each call, measured in alternation so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"median_ms": statistics.median(t), "p90_ms": sorted(t)[min(len(t) - 1, int(0.9 * len(t)))],
                   "reps": reps} for name, t in times.items()}
