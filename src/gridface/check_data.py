"""``python -m gridface.check_data dataset=<name> [dataset.root=...]``: read every label and decode every image of
a dataset once, before a long job, and report what is in it and what is wrong (file:line for each problem).

Writes ``report.json``, ``report.md`` and ``face_sizes.png``; exits with status 1 when it found a problem (0 with
``fail_on_problems=false``), so ``python -m gridface.check_data ... && python -m gridface.train ...`` works.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from gridface.data.check import scan_images, split_faults
from gridface.data.config import as_plain, split_samples
from gridface.data.problems import DataProblems, summary_line
from gridface.data.report import markdown, plot_face_sizes, split_stats
from gridface.stages.checks import check_stage_config
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir
from gridface.utils.io import write_json, write_text
from gridface.utils.validate import ConfigError, check_number

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    check_stage_config(cfg)
    data = as_plain(cfg.dataset)
    out = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    input_hw = (int(data["input_height"]), int(data["input_width"])) if "input_height" in data else None
    check_number("workers", cfg.get("workers"), 1, integer=True)
    check_number("log_first", cfg.get("log_first"), 0, integer=True)
    if not isinstance(cfg.get("fail_on_problems"), bool):
        raise ConfigError(f"fail_on_problems = {cfg.get('fail_on_problems')!r}: must be true or false")
    problems = DataProblems(log_first=int(cfg.log_first))
    start = time.perf_counter()
    stats = {}
    splits = [cfg.splits] if isinstance(cfg.splits, str) else list(cfg.splits)  # splits=val means [val]
    for split in splits:
        samples = split_samples(data, split, problems)
        for kind, message in split_faults(samples, split):  # what training and evaluation refuse at start-up
            problems.add(kind, str(data.get('root') or data.get('name', 'the dataset')), message)
        checks = scan_images(samples, problems, cfg.get("workers"), desc=f"{split}: decoding images")
        stats[split] = split_stats(checks, input_hw)
    title = f"Dataset check: {data.get('name', 'dataset')}"
    report = {"dataset": data, "splits": stats, "problems": problems.summary(examples=10**9),
              "seconds": time.perf_counter() - start}
    write_json(out / "report.json", report)
    plot_face_sizes(out / "face_sizes.png", stats)
    write_text(out / "report.md", markdown(title, stats, problems))
    for split, st in stats.items():
        print(f"{split}: {st['images_usable']}/{st['images_listed']} images usable, {st['faces']} faces, "
              f"{st['ignored_faces']} ignored")
    print(f"{summary_line(problems.counts())} -> {out / 'report.md'}")
    return report


@hydra.main(config_path=config_dir(), config_name="check_data", version_base="1.3")
@user_errors("check_data")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    if report["problems"]["total"] and cfg.fail_on_problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
