"""``python -m gridface.evaluate model=<.ckpt | .onnx | .engine>`` or ``predictions=<folder> gt=<ground truth>``:
the work is :func:`gridface.stages.evaluate.run`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gridface.stages.evaluate import run
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir

__all__ = ["main", "run"]


@hydra.main(config_path=config_dir(), config_name="evaluate", version_base="1.3")
@user_errors("evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
