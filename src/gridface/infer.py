"""``python -m gridface.infer model=<.ckpt | .onnx | engine> source=<image | folder | glob | video | camera>``:
the work is :func:`gridface.stages.infer.run`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gridface.stages.infer import run
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir

__all__ = ["main", "run"]


@hydra.main(config_path=config_dir(), config_name="infer", version_base="1.3")
@user_errors("infer")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
