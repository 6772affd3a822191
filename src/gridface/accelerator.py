"""What the training device can do, decided once at start-up: the mixed precision a GPU runs fastest in, and a
clear stop when a GPU recipe meets a machine without one.

On an H200 one training step at 736x416, batch 32, ran 716 images/s in fp32, 977 in 16-mixed, 859 in bf16-mixed and
1,874 in bf16-mixed with the model and batches in channels_last (experiments/gpu_2026-12-04): the layout matters as
much as the precision, so the module applies both (``GridBoxModule(channels_last=...)``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"  # trainer.precision=auto: bf16-mixed where the GPU supports it, else 16-mixed; 32-true on the CPU
GPU_ACCELERATORS = ("gpu", "cuda")


def wants_gpu(accelerator: Any) -> bool:
    return str(accelerator).lower() in GPU_ACCELERATORS


def auto_precision(accelerator: Any) -> str:
    """The precision ``trainer.precision=auto`` means on this machine."""
    if wants_gpu(accelerator) or (str(accelerator).lower() == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def check_gpu_available(accelerator: Any, config_hint: str = "trainer=cpu") -> None:
    """Stop before Lightning's ``MisconfigurationException`` with what to do instead."""
    if wants_gpu(accelerator) and not torch.cuda.is_available():
        from gridface.utils.validate import ConfigError

        raise ConfigError(f"trainer.accelerator = {accelerator}: this recipe trains on a GPU and no CUDA GPU is "
                          f"visible here; to train on the CPU add {config_hint} (slow at 736x416: shorten the run "
                          "with trainer.max_epochs= or debug=limit)")


def resolve_precision(trainer_cfg: Any) -> Any:
    """The Trainer's precision: ``auto`` becomes the concrete choice (logged); anything else is kept."""
    precision = trainer_cfg.get("precision")
    if str(precision) != AUTO:
        return precision
    chosen = auto_precision(trainer_cfg.get("accelerator"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and chosen != "32-true" else "CPU"
    log.info("trainer.precision=auto: %s on %s", chosen, device)
    return chosen
