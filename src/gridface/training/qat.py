"""Quantization-aware training (TAO's ``enable_qat``) with NVIDIA Model Optimizer (``nvidia-modelopt``).

:class:`QuantizeCallback` inserts fake quantizers matching the TensorRT INT8 scheme of ``export=onnx_int8_trt``
(int8, symmetric: weights per output channel (axis 0), activations per tensor, zero-points 0, biases float; the stem
and the two head convolutions float, as post-training calibration keeps them), calibrates them (max) on a few
training batches before the first step, and stores Model Optimizer's state in every checkpoint, so
``GridBoxModule.from_checkpoint`` rebuilds the quantized network (:func:`restore_quantized`) and the export stage
writes its own Q/DQ graph without calibration.

Model Optimizer rather than torch's own fake quantization: it is NVIDIA's tool for TensorRT's explicit quantization
(its ONNX export writes the int8 QuantizeLinear/DequantizeLinear pairs TensorRT fuses) and it runs on the CPU.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from gridface.data.datamodule import training_batches

log = logging.getLogger(__name__)
STATE_KEY = "modelopt_state"  # the checkpoint key holding Model Optimizer's state of ``net``
RECORD_KEY = "qat"  # the checkpoint key holding what the quantization was (exported models' metadata)


def require_modelopt() -> Any:
    """``modelopt.torch.quantization``, or one line saying how to install it."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise ImportError(f"quantization-aware training needs NVIDIA Model Optimizer ({e}): "
                          "pip install -e '.[qat]'") from None
    return mtq


def quant_config(base: str, float_modules: Sequence[str]) -> dict[str, Any]:
    """Model Optimizer's config ``base`` (e.g. INT8_DEFAULT_CFG) with the quantizers of ``float_modules`` (module-name
    wildcards, e.g. ``*head.cov.*``) disabled."""
    mtq = require_modelopt()
    if not hasattr(mtq, base):
        raise ValueError(f"callbacks.quantize.base: modelopt has no config '{base}' (e.g. INT8_DEFAULT_CFG)")
    cfg = copy.deepcopy(getattr(mtq, base))
    check_tensorrt_int8(base, cfg)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [{"quantizer_name": p, "enable": False} for p in float_modules]
    return cfg


def check_tensorrt_int8(base: str, cfg: dict[str, Any]) -> None:
    """``cfg`` must fake-quantize in the scheme the QAT export writes (int8 weights per output channel, int8
    activations per tensor, max ranges): any other (FP8, MX block scales, weight-only, SmoothQuant) trained to the
    end and then failed in the export's ONNX Runtime check (an FP8 QuantizeLinear it has no kernel for)."""
    entries = cfg.get("quant_cfg") or []
    if isinstance(entries, dict):  # Model Optimizer's older form: {quantizer name: settings}
        entries = [{"quantizer_name": k, **({"cfg": v} if "num_bits" in v else v)} for k, v in entries.items()]
    named = {e.get("quantizer_name"): e for e in entries if isinstance(e, dict)}

    def int8(name: str, axis: int | None) -> bool:
        entry = named.get(name) or {}
        settings = entry.get("cfg") or {}
        return (entry.get("enable", True) is not False and settings.get("num_bits") == 8
                and settings.get("axis") == axis and not settings.get("block_sizes"))

    algorithm = cfg.get("algorithm")
    method = algorithm.get("method") if isinstance(algorithm, dict) else algorithm
    if not (int8("*weight_quantizer", 0) and int8("*input_quantizer", None) and method == "max"):
        raise ValueError(f"callbacks.quantize.base={base}: gridface's QAT exports TensorRT's int8 Q/DQ scheme (int8 "
                         "weights per output channel, int8 activations per tensor, max calibration), which this "
                         "Model Optimizer config does not fake-quantize: use INT8_DEFAULT_CFG")


def quantize_net(net: nn.Module, base: str, float_modules: Sequence[str], batches: Sequence[torch.Tensor]) -> nn.Module:
    """Insert the quantizers into ``net`` (in place) and calibrate their ranges on ``batches`` (eval mode: BatchNorm's
    running statistics are left as trained)."""
    mtq = require_modelopt()
    if not batches:
        raise ValueError("QAT calibration needs at least one training batch")
    training = net.training
    net.eval()

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for x in batches:
                model(x)

    net = mtq.quantize(net, quant_config(base, float_modules), forward_loop)
    net.train(training)
    return net


def is_quantized(net: nn.Module) -> bool:
    return any(type(m).__name__ == "TensorQuantizer" for m in net.modules())


def restore_quantized(net: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Re-insert the quantizers recorded in a checkpoint's ``modelopt_state`` (the state dict then fills their
    ranges)."""
    require_modelopt()
    import modelopt.torch.opt as mto

    return mto.restore_from_modelopt_state(net, state)


def disabled_quantizers(net: nn.Module) -> Any:
    """A context in which ``net`` runs in float (its quantizers off): the FP32 model of a QAT checkpoint."""
    return _Disabled(net, require_modelopt())


class _Disabled:
    def __init__(self, net: nn.Module, mtq: Any) -> None:
        self.net, self.mtq = net, mtq

    def __enter__(self) -> nn.Module:
        self.mtq.disable_quantizer(self.net, "*")
        return self.net

    def __exit__(self, *exc: object) -> None:
        self.mtq.enable_quantizer(self.net, "*")


class QuantizeCallback(pl.Callback):
    """Fake-quantize the module's network before training (see the module docstring).

    ``base``: a Model Optimizer config name; ``float_modules``: wildcards of the modules left float;
    ``calibration_batches``: how many training batches calibrate the ranges; ``require_model``: refuse to start
    without ``model`` (the trained checkpoint given as ``model=``), as ``experiment=qat``'s short fine-tune does: on
    random weights it would quantize and "fine-tune" a network that never learned."""

    def __init__(self, base: str = "INT8_DEFAULT_CFG", float_modules: Sequence[str] = (),
                 calibration_batches: int = 8, require_model: bool = False, model: str | None = None) -> None:
        if require_model and not model:
            raise ValueError("experiment=qat fine-tunes a trained model: give model=<trained .ckpt> (train one "
                             "first: QAT calibrates its int8 ranges once, on the weights it starts from)")
        if calibration_batches < 1:
            raise ValueError(f"callbacks.quantize.calibration_batches must be >= 1, got {calibration_batches}")
        if not model:
            rank_zero_warn("callbacks.quantize without model=<trained .ckpt>: the int8 ranges are calibrated once, "
                           "before the first step, on the weights the run starts from; from untrained weights they "
                           "will not fit the trained network (experiment=qat model=<.ckpt> fine-tunes a trained one)")
        self.base, self.float_modules = base, list(float_modules)
        self.calibration_batches = int(calibration_batches)
        self.record: dict[str, Any] = {}
        quant_config(self.base, self.float_modules)  # at config time, not after the data is built (or the training)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before a resumed run's checkpoint is loaded (which then sets the calibrated ranges again)."""
        if stage != "fit" or is_quantized(pl_module.net):
            return
        loader = training_batches(trainer.datamodule, pl_module.device)
        batches = [b["image"] for b in itertools.islice(loader, self.calibration_batches) if "image" in b]
        pl_module.net = quantize_net(pl_module.net, self.base, self.float_modules, batches)
        self.record = {"method": "qat", "tool": "nvidia-modelopt", "base": self.base,
                                             "float_modules": self.float_modules,
                                             "calibration_batches": len(batches)}
        rank_zero_info(f"QAT: fake-quantized the network ({self.base}, float: {self.float_modules}), ranges "
                       f"calibrated on {len(batches)} training batches")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        import modelopt.torch.opt as mto

        checkpoint[STATE_KEY] = mto.modelopt_state(pl_module.net)
        checkpoint[RECORD_KEY] = self.record
