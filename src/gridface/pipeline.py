"""``python -m gridface.pipeline``: train -> prune -> retrain -> export -> evaluate every artifact -> infer ->
benchmark -> report, each stage skipped when its recorded outputs still stand. The work is
:func:`gridface.workflow.runner.run_pipeline`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir
from gridface.workflow.runner import run_pipeline

__all__ = ["main", "run_pipeline"]


@hydra.main(config_path=config_dir(), config_name="pipeline", version_base="1.3")
@user_errors("pipeline")
def main(cfg: DictConfig) -> None:
    result = run_pipeline(cfg, Path(cfg.paths.output_dir))
    report = result["report"] or "none yet (pipeline.stages left out the report stage)"
    outdated = result.get("outdated") or {}
    if result["ran"]:
        print(f"pipeline {result['run_dir']}: ran {', '.join(result['ran'])}")
    if outdated:  # left out of pipeline.stages: kept as they were, and they now describe earlier outputs
        print("pipeline: out of date, not rerun (not in pipeline.stages): "
              + "; ".join(f"{name} ({why})" for name, why in outdated.items())
              + ". Run without pipeline.stages= (or with them in it) to bring them up to date")
        print(f"report: {report}" + (" (out of date: it describes the earlier outputs)" if "report" in outdated
                                     else ""))
    elif result["ran"]:
        print(f"report: {report}")
    else:  # a finished pipeline: only where its report is
        print(f"report: {report} (nothing to do: every stage of {result['run_dir']} is up to date)")


if __name__ == "__main__":
    main()
