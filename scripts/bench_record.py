"""One benchmark record from the parts ``make bench`` wrote: deployment (model alone per backend), inference
pipeline (``gridface.infer`` end to end against the model alone), clustering, training and WIDER FACE evaluation,
under one machine header (CPU model, vector ISA, cores, library versions), so the figures sit side by side.
A part measured on another CPU than this one (a stale file) is marked, never passed off as this machine's; ``make
bench`` starts with ``--start``, which removes an earlier run's parts. Results: bench_results/record.{json,md}.

    python scripts/bench_record.py [--results bench_results] [--start]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridface.utils.io import write_json, write_text  # noqa: E402
from gridface.utils.machine import machine_line, machine_record  # noqa: E402

PARTS = {  # file stem: heading, in the order the record shows them
    "deploy": "Deployment: the model alone, per backend",
    "infer": "Inference pipeline: gridface.infer end to end against the model alone",
    "clustering": "Clustering (post-processing) per image",
    "train": "Training step",
    "widerface": "WIDER FACE evaluation",
}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def part_machine(data: dict) -> dict:
    machine = data.get("machine")
    if isinstance(machine, dict):
        return machine
    return {k: data[k] for k in ("cpu", "isa", "cores") if k in data}  # bench_train keeps them at the top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="bench_results")
    ap.add_argument("--start", action="store_true",
                    help="remove the parts and record of an earlier run (make bench does, first): a part that then "
                         "fails shows as not measured, never as an earlier run's figures")
    args = ap.parse_args()
    results, here = Path(args.results), machine_record()
    if args.start:
        for stem in [*PARTS, "record"]:
            for suffix in (".json", ".md"):
                (results / f"{stem}{suffix}").unlink(missing_ok=True)
        return
    record = {"machine": here, "commit": git_commit(), "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}}
    lines = ["# gridface benchmark record", "", f"Machine: {machine_line()}; commit {record['commit']}; "
             f"{record['written']}", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in here["versions"].items())]
    for stem, heading in PARTS.items():
        data_file, text_file = results / f"{stem}.json", results / f"{stem}.md"
        if not data_file.is_file():
            lines += ["", f"## {heading}", "", f"(not measured: {data_file} is missing)"]
            continue
        data = json.loads(data_file.read_text())
        record["parts"][stem] = data
        elsewhere = part_machine(data)
        lines += ["", f"## {heading}", ""]
        if elsewhere and (elsewhere.get("cpu"), elsewhere.get("isa")) != (here["cpu"], here["isa"]):
            lines += [f"**Measured on another machine** ({elsewhere.get('cpu')}, ISA "
                      f"{'/'.join(elsewhere.get('isa') or [])}): not comparable with the parts above.", ""]
        body = text_file.read_text().splitlines() if text_file.is_file() else ["(no table written)"]
        lines += [line for line in body if not line.startswith("Machine: ")]
    write_json(results / "record.json", record)
    write_text(results / "record.md", "\n".join(lines).rstrip() + "\n")
    print(f"wrote {results / 'record.md'} and record.json")


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
