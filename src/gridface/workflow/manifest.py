"""A stage's record of what it read and wrote: ``<run>/<stage>/manifest.json``.

A stage is finished when its manifest exists, every output it lists is still there with the same hash, its
configuration is the one it was run with, and its inputs are the same files from the same run of the stage that
made them. Anything else (a deleted INT8 model, a retrained checkpoint, a changed setting) runs the stage again, and
with it every stage that reads its outputs: a rebuilt input reruns its readers even when it came out bit-identical,
as ``make`` would, so what a report shows was measured on the files beside it.

A stage also records, before it works, the configuration and inputs it starts with (``started.json``): a stage
that died leaves no manifest, and its folder is resumed only by a rerun with the same ones.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridface.utils.io import write_json
from gridface.utils.machine import library_versions

MANIFEST = "manifest.json"
STARTED = "started.json"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# keys that set how fast a stage runs, never what it makes (training's resume passes over them too): changing one
# (more loader workers for a rerun) must not redo a stage, least of all hours of training
SPEED_ONLY = ("num_workers", "prefetch", "compile", "channels_last", "threads", "read_workers", "model_workers",
              "opencv_threads", "spin")


def without_speed_settings(config: Any) -> Any:
    """``config`` without the :data:`SPEED_ONLY` keys, at any depth."""
    if isinstance(config, dict):
        return {k: without_speed_settings(v) for k, v in config.items() if k not in SPEED_ONLY}
    if isinstance(config, list):
        return [without_speed_settings(v) for v in config]
    return config


def config_sha256(config: Any, speed_settings: bool = False) -> str:
    """The hash a stage's configuration is told by; ``speed_settings=True``: with the :data:`SPEED_ONLY` keys, as
    manifests of earlier gridface versions recorded it (still accepted, so an upgrade redoes nothing)."""
    data = config if speed_settings else without_speed_settings(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_records(paths: dict[str, Path], producers: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """``{name: {path, sha256}}``, plus ``run_id`` of the stage run that wrote each input (``producers``)."""
    records = {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in paths.items()}
    for name, run_id in (producers or {}).items():
        if name in records:
            records[name]["run_id"] = run_id
    return records


@dataclass
class StageRecord:
    """What ``manifest.json`` holds; ``status`` is ``done`` or ``skipped`` (with ``reason``, e.g. no TensorRT);
    ``run_id`` names this run of the stage, and its readers record it beside each input."""

    stage: str
    status: str
    inputs: dict[str, dict[str, str]]
    outputs: dict[str, dict[str, str]]
    config_sha256: str
    config: Any = None
    reason: str | None = None
    seconds: float = 0.0
    finished: str = ""
    versions: dict[str, str] | None = None
    run_id: str = ""


def write_manifest(folder: Path, stage: str, status: str, inputs: dict[str, Path], outputs: dict[str, Path],
                   config: Any, seconds: float, reason: str | None = None,
                   producers: dict[str, str] | None = None) -> StageRecord:
    record = StageRecord(stage, status, file_records(inputs, producers), file_records(outputs),
                         config_sha256(config), config, reason, seconds, time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                         library_versions(), uuid.uuid4().hex)
    write_json(folder / MANIFEST, vars(record))
    return record


def read_manifest(folder: Path) -> StageRecord | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return StageRecord(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None  # unreadable or from another version: the stage runs again


def write_start(folder: Path, stage: str, inputs: dict[str, Path], config: Any,
                producers: dict[str, str] | None = None) -> None:
    """Record, before a stage works in ``folder``, the configuration and inputs it starts with: if it dies (no
    manifest), :func:`why_not_resumable` lets only a rerun with the same ones resume its folder."""
    write_json(folder / STARTED, {"stage": stage, "config_sha256": config_sha256(config),
                                  "inputs": file_records(inputs, producers)})


def why_not_resumable(folder: Path, inputs: dict[str, Path], config: Any,
                      producers: dict[str, str] | None = None) -> str | None:
    """None when the unfinished run in ``folder`` (no manifest) was started with this configuration and these
    inputs, so a rerun resumes it; else why it must start afresh."""
    try:
        started = json.loads((folder / STARTED).read_text())
        return settings_changed(started["config_sha256"], started["inputs"], inputs, config, producers)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return "it does not record the settings it was started with"


def settings_changed(recorded_sha256: str, recorded_inputs: dict[str, dict[str, str]], inputs: dict[str, Path],
                     config: Any, producers: dict[str, str] | None = None) -> str | None:
    """Why a recorded configuration hash and input records no longer describe this run of the stage, or None."""
    if recorded_sha256 not in (config_sha256(config), config_sha256(config, speed_settings=True)):
        return "its configuration changed"
    current = {name: str(p) for name, p in inputs.items()}
    if {n: r["path"] for n, r in recorded_inputs.items()} != current:
        return "its inputs changed"
    for name, rec in recorded_inputs.items():  # by content: a stage rerun that wrote the same bytes changed nothing
        if not Path(rec["path"]).is_file() or file_sha256(Path(rec["path"])) != rec["sha256"]:
            return f"input {name} ({rec['path']}) changed"
    return None


def why_stale(record: StageRecord | None, inputs: dict[str, Path], config: Any,
              producers: dict[str, str] | None = None) -> str | None:
    """None when the recorded stage still stands; else the reason it must run again. ``producers``: the run id of
    the stage run that wrote each input now."""
    if record is None:
        return "not run yet"
    if record.status != "done":
        return f"it was {record.status} before ({record.reason})"
    changed = settings_changed(record.config_sha256, record.inputs, inputs, config, producers)
    if changed:
        return changed
    for name, rec in record.outputs.items():
        path = Path(rec["path"])
        if not path.is_file():
            return f"output {name} ({path}) is missing"
        if file_sha256(path) != rec["sha256"]:
            return f"output {name} ({path}) changed"
    return None
