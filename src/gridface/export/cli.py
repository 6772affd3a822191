"""``python -m gridface.export model=<.ckpt> export=<onnx | onnx_int8 | onnx_int8_trt | tensorrt_fp32 |
tensorrt_fp16 | tensorrt_int8>``: the work is :func:`gridface.stages.export.run`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gridface.stages.export import run
from gridface.utils.cli import rename_legacy_arguments
from gridface.utils.errors import user_errors
from gridface.utils.hydra import config_dir

__all__ = ["main", "run"]


@hydra.main(config_path=config_dir(), config_name="export", version_base="1.3")
@user_errors("export")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    rename_legacy_arguments("export")
    hydra_main()


if __name__ == "__main__":
    main()
