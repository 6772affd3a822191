"""``python -m gridface.prune model=<trained .ckpt> prune=<ratio | threshold>``: the work is
:func:`gridface.stages.prune.run` (``pruned.ckpt`` plus ``prune_report.{json,md}``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gridface.stages.prune import run
from gridface.utils.cli import rename_legacy_arguments
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir

__all__ = ["main", "run"]


@hydra.main(config_path=config_dir(), config_name="prune", version_base="1.3")
@user_errors("prune")
def hydra_main(cfg: DictConfig) -> float | None:
    report = run(cfg)
    ap = report.get("ap50") or {}
    return ap.get("retrained", ap.get("pruned"))


def main() -> None:
    rename_legacy_arguments("prune")
    hydra_main()


if __name__ == "__main__":
    main()
