"""``python -m gridface.train``: train (or retrain) a GridBox detector; the work is
:func:`gridface.stages.train.run`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info

from gridface.accelerator import check_gpu_available
from gridface.stages.checks import check_stage_config
from gridface.stages.train import build, is_rank_zero, run
from gridface.utils.cli import rename_legacy_arguments
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir

__all__ = ["build", "main", "run"]


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
@user_errors("train")
def hydra_main(cfg: DictConfig) -> float | None:
    check_stage_config(cfg)  # a wrong model=, dataset key or missing GPU is one line, before the config is printed
    check_gpu_available(cfg.trainer.get("accelerator"))
    if cfg.get("print_config", True):
        rank_zero_info(OmegaConf.to_yaml(cfg, resolve=True))
    result = run(cfg)
    out = Path(cfg.paths.output_dir)
    if is_rank_zero():
        from gridface.utils.io import write_json

        write_json(out / "result.json", result)
    metric = cfg.get("optimized_metric")
    return result["metrics"].get(metric) if metric else None


def main() -> None:
    rename_legacy_arguments("train")
    hydra_main()


if __name__ == "__main__":
    main()
