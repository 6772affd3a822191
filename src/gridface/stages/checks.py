"""What every stage checks in its config first (dataset, post-processing, evaluation, output folder), before any
heavy work: a value out of range stops it with a :class:`~gridface.utils.validate.ConfigError` naming the key, the
value and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gridface.data.config import DECODE_CHOICES, PREFETCH_CHOICES
from gridface.postprocess import check_postprocess_values
from gridface.targets import STRIDE
from gridface.utils.validate import ConfigError, check_number, check_writable

CHECKPOINT = (".ckpt", ".pt", ".pth")
ENGINE = (".engine", ".plan")
# the model files each stage reads as model=, by suffix (the backends pick theirs the same way)
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "train": CHECKPOINT, "prune": CHECKPOINT, "export": (*CHECKPOINT, ".onnx"),
    "evaluate": (*CHECKPOINT, ".onnx", *ENGINE), "infer": (*CHECKPOINT, ".onnx", *ENGINE),
}
WHAT = {".ckpt": "a gridface checkpoint (.ckpt)", ".onnx": "an ONNX model gridface.export wrote",
        ".engine": "a TensorRT engine (.engine, .plan)"}


def check_model_file(stage: str, model: str, key: str = "model") -> None:
    """``model=`` (or ``key``) exists and is a kind of file ``stage`` reads: a wrong file is one line before any
    loading."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"{key} = '{model}': no such file")
    if path.is_dir():
        raise ConfigError(f"{key} = '{model}' is a folder: give the model file in it (e.g. checkpoints/best.ckpt)")
    kinds = STAGE_MODELS.get(stage)
    if kinds and path.suffix.lower() not in kinds:
        what = " or ".join(v for k, v in WHAT.items() if k in kinds)
        hint = (": an exported model cannot be trained or pruned; give the checkpoint it was exported from (its "
                "metadata JSON names it)" if path.suffix.lower() in (".onnx", *ENGINE) else "")
        raise ConfigError(f"{key} = '{model}': gridface.{stage} reads {what}, not a '{path.suffix or 'no suffix'}' "
                          f"file{hint}")


def check_dataset(ds: DictConfig) -> None:
    for key in ("input_width", "input_height"):
        value = ds.get(key)
        if value is not None and not (isinstance(value, int) and value > 0 and value % STRIDE == 0):
            raise ConfigError(f"dataset.{key} = {value!r}: must be a positive multiple of {STRIDE} (the network's "
                              "output stride), e.g. input_width=736 input_height=416")
    check_number("dataset.batch_size", ds.get("batch_size"), 1, integer=True)
    check_number("dataset.num_workers", ds.get("num_workers"), 0, integer=True)
    check_number("dataset.min_box_size", ds.get("min_box_size"), 0)
    check_number("dataset.min_face", ds.get("min_face"), 0)
    decode = ds.get("decode")
    if decode is not None and decode not in DECODE_CHOICES:
        raise ConfigError(f"dataset.decode = {decode!r}: must be cpu (decode and augment in the loader workers), "
                          "gpu (decode (nvJPEG), augment and encode batched on the training device) or hybrid "
                          "(workers decode and letterbox, the device augments and encodes)")
    prefetch = ds.get("prefetch")
    if prefetch is not None and prefetch not in PREFETCH_CHOICES:
        raise ConfigError(f"dataset.prefetch = {prefetch!r}: must be stream (a device path builds each batch on a "
                          "side CUDA stream from the training loop's thread) or thread (from a build thread)")
    if "root" in list(ds.keys()):  # ``"root" in ds`` is False when its value is missing (???)
        if OmegaConf.is_missing(ds, "root"):
            raise ConfigError(f"dataset.root is not set: give dataset.root=<the folder of the {ds.get('name', '')} "
                              "data>")
        root = ds.get("root")
        if isinstance(root, str) and not Path(root).expanduser().exists():
            raise ConfigError(f"dataset.root = '{root}' does not exist")


def check_postprocess(pp: DictConfig | dict) -> None:
    """Value ranges of the post-processing keys that are set (null: the model's own value)."""
    check_postprocess_values(OmegaConf.to_container(pp, resolve=True) if isinstance(pp, DictConfig) else dict(pp))


def check_device(device: Any, cuda_needed: bool = True) -> None:
    """``device=`` of the stages that run a model on their own (evaluate, infer): cpu, cuda or cuda:N, and, for a
    model torch runs (``cuda_needed``: a checkpoint; ONNX Runtime and TensorRT pick their own device), a CUDA device
    only where torch sees one."""
    text = str(device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ConfigError(f"device = '{text}': must be cpu, cuda or cuda:<index>")
    if text.startswith("cuda") and cuda_needed:
        import torch

        count = torch.cuda.device_count()
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= count:
            raise ConfigError(f"device = '{text}': " + ("no CUDA device is visible here" if not count else
                                                        f"this machine has {count} CUDA device(s)") +
                              "; use device=cpu")


def check_training(cfg: DictConfig) -> None:
    """The training keys whose wrong values Lightning or torch answer with a traceback that names no key (an
    OverflowError for max_epochs=-1, a ZeroDivisionError for accumulate_grad_batches=0, 'invalid literal for int()'
    for seed=abc) or not at all (max_epochs=0 trained nothing and exited 0)."""
    tr = cfg.trainer
    check_number("seed", cfg.get("seed"), integer=True)
    check_number("checkpoint_every_n_steps", cfg.get("checkpoint_every_n_steps"), 0, integer=True)
    max_steps = tr.get("max_steps")
    if max_steps not in (None, -1):
        check_number("trainer.max_steps", max_steps, 1, integer=True)
    else:
        epochs = tr.get("max_epochs")
        if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
            raise ConfigError(f"trainer.max_epochs = {epochs!r}: must be a whole number >= 1 (or give "
                              "trainer.max_steps): the learning-rate schedule spans the whole run, so it has an end")
    check_number("trainer.accumulate_grad_batches", tr.get("accumulate_grad_batches"), 1, integer=True)
    check_number("trainer.gradient_clip_val", tr.get("gradient_clip_val"), 0)
    check_number("trainer.check_val_every_n_epoch", tr.get("check_val_every_n_epoch"), 1, integer=True)
    opt = cfg.get("optimizer")
    if opt is not None:
        check_number("optimizer.max_lr", opt.get("max_lr"), 0, low_open=True)
        check_number("optimizer.min_lr", opt.get("min_lr"), 0)
    callbacks = cfg.get("callbacks") or {}
    export = (callbacks.get("export") or {}).get("export") or {}
    if callbacks.get("quantize") is not None and export.get("precision") == "int8" and \
            export.get("activation_type") != "int8":  # refused by the export at the end, after the whole training
        raise ConfigError(f"callbacks/export={export.get('format')} (export.activation_type="
                          f"{export.get('activation_type')}) with quantization-aware training (callbacks.quantize): "
                          "a QAT model's INT8 model is TensorRT's symmetric int8 Q/DQ graph; use "
                          "callbacks/export=onnx_int8_trt (or tensorrt_int8)")


def check_stage_config(cfg: DictConfig) -> None:
    """What every stage checks first: the dataset (when given), post-processing, evaluation, and ``output_dir``
    when given (Hydra creates, and so checks, its own run folder before the stage starts)."""
    model = cfg.get("model")
    if model is not None and not isinstance(model, str):
        keys = sorted(model.keys()) if isinstance(model, DictConfig) else model
        raise ConfigError(f"model = {keys}: model is the input model's path in every stage (gridface 0.2); the "
                          "network's settings are under network: (e.g. network.pretrained=), the weights to start "
                          "from are model=<.ckpt>")
    if model is not None:
        check_model_file(str(cfg.get("task_name") or ""), model)
    if cfg.get("dataset") is not None:
        check_dataset(cfg.dataset)
    if cfg.get("postprocess") is not None:
        check_postprocess(cfg.postprocess)
    if cfg.get("trainer") is not None:
        check_training(cfg)
    ev = cfg.get("evaluation")
    if ev is not None:
        check_number("evaluation.iou", ev.get("iou"), 0, 1, low_open=True)
        if ev.get("min_height") is not None:
            raise ConfigError("evaluation.min_height is gone: faces are counted from postprocess."
                              "minimum_bounding_box_height, the decoder's cut, in network-input pixels")
    if cfg.get("device") is not None:
        check_device(cfg.device, cuda_needed=model is not None and Path(str(model)).suffix.lower() in CHECKPOINT)
    if cfg.get("task_name") == "infer":  # what 0 breaks (the others are clamped to 1)
        for key in ("batch_size", "read_workers", "frame_stride"):
            check_number(key, cfg.get(key), 1, integer=True)
        check_number("max_frames", cfg.get("max_frames"), 0, integer=True)  # 0 (or null): no limit
    if cfg.get("output_dir"):
        check_writable("output_dir", cfg.output_dir)
