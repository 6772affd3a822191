"""GridBoxModule: the LightningModule tying network, loss, post-processing and metrics together.

Its hyper-parameters are plain values (class names, input size, model/loss/postprocess/optimizer
settings), saved in every checkpoint, so ``GridBoxModule.from_checkpoint(path)`` rebuilds the model in
a fresh process without the training config. The optimizer and its LR scheduler are config too
(``optimizer.algorithm`` and ``optimizer.scheduler``, ``_target_`` + ``_partial_``), instantiated in
:meth:`GridBoxModule.configure_optimizers`; what a module is built without comes from the YAML defaults
(``configs/optimizer/tao.yaml``, ``configs/evaluation/default.yaml``), never from values repeated here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

from gridface.data.problems import OUTSIDE_IMAGE, DataProblems
from gridface.evaluation.ap import f1_best_threshold
from gridface.evaluation.metrics import detection_metrics, image_record
from gridface.loss import GridBoxLoss, add_l1_gradient, l1_weight_penalty
from gridface.model import GridBoxNet
from gridface.model.head import coverage_probabilities
from gridface.model.widths import apply_widths
from gridface.postprocess import GridBoxDecoder
from gridface.training.qat import RECORD_KEY as QAT_RECORD_KEY
from gridface.training.qat import STATE_KEY as QAT_STATE_KEY
from gridface.utils.checkpoint import load_checkpoint
from gridface.utils.finite import NonFiniteError, non_finite_names
from gridface.utils.hydra import group_default

log = logging.getLogger(__name__)



def optimizer_config(given: dict[str, Any] | None) -> dict[str, Any]:
    """The full optimizer config, plain values: ``given`` when it names the ``algorithm`` (a config composed from
    ``configs/optimizer/``; no ``scheduler``, or a null one, keeps the learning rate constant), else ``given`` merged
    over ``configs/optimizer/tao.yaml``: a module built without an optimizer config trains with TAO's, and an older
    checkpoint's five values (min_lr, max_lr, soft_start, annealing, weight_decay) feed that file's Adam and
    soft-start annealing (``lr: ${..max_lr}``, ...) as they did."""
    given = dict(given or {})
    if "algorithm" in given:
        return given
    return group_default("optimizer", "tao", given)


def detection_metric_names(class_names: list[str], evaluation: dict[str, Any]) -> list[str]:
    """What validation measures, logged as ``val/<name>`` (and what ``gridface.evaluate`` reports)."""
    names = ["AP50", *(f"AP50_{c}" for c in class_names)]
    if evaluation.get("coco", True):
        names += ["mAP", "AR"]
    if evaluation.get("wider_gt"):
        names += ["wider_easy", "wider_medium", "wider_hard"]
    return names


def validation_metric_names(class_names: list[str], evaluation: dict[str, Any]) -> list[str]:
    """Every ``val/`` key a training run logs: the detection metrics, the loss, the image count and the operating
    point (a metric to monitor or tune on must be one of them)."""
    return [f"val/{n}" for n in [*detection_metric_names(class_names, evaluation), "images", "loss",
                                 "score_threshold", "F1"]]


class GridBoxModule(pl.LightningModule):
    def __init__(
        self,
        class_names: Sequence[str] = ("face",),
        input_size: Sequence[int] = (160, 256),
        model: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        postprocess: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        """``model`` holds GridBoxNet's arguments plus ``init_from``; ``loss`` GridBoxLoss's plus
        ``l1_regularization``; ``data`` the dataset config it trains on (see ``data.config``), kept in the
        checkpoint so later stages default to the same data. ``channels_last`` and ``compile`` apply on a CUDA
        device only (tensor cores want NHWC; on the CPU both cost more than they give); checkpoints hold ordinary
        contiguous fp32 weights either way."""
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.input_hw = (int(input_size[0]), int(input_size[1]))
        model, loss = dict(model or {}), dict(loss or {})
        init_from = model.pop("init_from", None)
        l1_regularization = float(loss.pop("l1_regularization", 0.0))
        self.net = GridBoxNet(num_classes=len(self.class_names), **model)
        if self.input_hw[0] % self.net.stride or self.input_hw[1] % self.net.stride:
            raise ValueError(f"input size {self.input_hw} must be a multiple of {self.net.stride}")
        self.criterion = GridBoxLoss(**loss)
        self.decoder = GridBoxDecoder(stride=self.net.stride, **(postprocess or {}))
        self._eval_cfg: dict[str, Any] | None = None  # hparams' evaluation over the YAML default, when first used
        self._wider_gt = None
        self.l1_regularization = l1_regularization
        if l1_regularization < 0:
            raise ValueError(f"l1_regularization must be >= 0, got {l1_regularization}")
        self._val_dets: list = []
        self._val_gts: list = []
        self._val_paths: list[str] = []
        self.qat_record: dict[str, Any] | None = None  # a QAT checkpoint's record (from_checkpoint)
        self.operating_point: dict[str, float] | None = None  # the last validation's F1-best threshold
        # images skipped because they could not be used (path -> kind and where listed), for the run's summary
        self.skipped_images: dict[str, dict[str, str]] = {}
        # images whose labels list boxes wholly outside them (path -> problem record), seen once decoded: logged
        # as label problems are (the first ones in full, then counted) and reported with the skips
        self.images_with_boxes_outside: dict[str, dict[str, str]] = {}
        self.decode_problems = DataProblems()
        self.channels_last, self.compile_net = bool(channels_last), bool(compile)
        self._memory_format = torch.contiguous_format
        if init_from:
            self.init_weights_from(init_from)

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides: Any) -> GridBoxModule:
        """Rebuild from a checkpoint alone (no ImageNet file, no init_from needed)."""
        ckpt = load_checkpoint(path)
        hp = dict(ckpt.get("hyper_parameters", {}))
        if "class_names" not in hp:
            raise ValueError(f"{path}: not a gridface checkpoint (no hyper_parameters.class_names)")
        hp["model"] = {**(hp.get("model") or {}), "pretrained": None, "init_from": None}
        hp.update(overrides)
        module = cls(**hp)
        if ckpt.get(QAT_STATE_KEY):  # a quantization-aware training checkpoint: re-insert its fake quantizers
            from gridface.training.qat import restore_quantized

            try:
                module.net = restore_quantized(module.net, ckpt[QAT_STATE_KEY])
            except ImportError:
                raise ImportError(f"{path} is a quantization-aware training checkpoint (fake-quantized): running it "
                                  "in PyTorch needs NVIDIA Model Optimizer (pip install -e '.[qat]'); its exported "
                                  "ONNX model (gridface.export export=onnx_int8_trt) runs without it") from None
            module.qat_record = dict(ckpt.get(QAT_RECORD_KEY) or {"method": "qat"})
        module.load_state_dict(ckpt["state_dict"])
        return module

    def init_weights_from(self, path: str | Path) -> None:
        """Start from another run's weights (fine-tuning, retraining); optimizer state is not taken."""
        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict")
        if state is None:
            raise ValueError(f"{path}: no state_dict in checkpoint")
        if ckpt.get(QAT_STATE_KEY):
            raise ValueError(f"{path}: a quantization-aware training checkpoint (fake-quantized); start from the "
                             "float checkpoint it was trained from, or export it (export=onnx_int8_trt)")
        hp = ckpt.get("hyper_parameters") or {}
        saved_net, net = hp.get("model") or {}, self.hparams.get("model") or {}
        theirs, ours = saved_net.get("backbone"), net.get("backbone")
        if theirs and ours and theirs != ours:
            raise ValueError(f"model={path} is a {theirs} network; this run builds {ours}: give network={theirs} "
                             "(the network it was trained as), or start from a checkpoint of this network")
        classes = list(hp.get("class_names") or [])
        if classes and len(classes) != len(self.class_names):
            raise ValueError(f"model={path} detects {len(classes)} classes {classes}, this run trains "
                             f"{len(self.class_names)} {self.class_names} (dataset.class_names): its head cannot be "
                             "loaded; train the same classes, or start from ImageNet weights (network.pretrained=)")
        widths = saved_net.get("widths")
        net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        try:
            if widths:  # a pruned network: take its shape, and record it so this run's checkpoints rebuild it
                self.set_widths(widths)
            self.net.load_state_dict(net_state)
        except (RuntimeError, KeyError) as e:  # torch lists every mismatched tensor: the first lines say enough
            detail = " ".join(str(e).split())[:300]
            raise ValueError(f"model={path}: its weights do not fit the network this run builds ({detail} ...); "
                             "give the network=, dataset.class_names= and widths it was trained with") from None
        rank_zero_info(f"initialised weights from {path}" + (" (pruned network)" if widths else ""))

    def set_widths(self, widths: dict[str, list[int]]) -> None:
        """Reshape the network to pruned ``widths`` and store them in the hyper-parameters (checkpoints)."""
        apply_widths(self.net, widths)
        self.hparams["model"] = {**(self.hparams.get("model") or {}), "widths": widths}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(images)

    def configure_model(self) -> None:
        """On a CUDA device: NHWC weights (batches follow in :meth:`net_input`) and, when asked, a compiled
        network (``nn.Module.compile`` keeps the state-dict keys, so checkpoints do not change)."""
        if self.trainer.strategy.root_device.type != "cuda":
            return
        if self.channels_last and self._memory_format is not torch.channels_last:
            self._memory_format = torch.channels_last
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and getattr(self.net, "_compiled_call_impl", None) is None:
            self.net.compile()

    def net_input(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["image"].contiguous(memory_format=self._memory_format)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._memory_format is not torch.contiguous_format:  # a checkpoint is read by pruning and export
            checkpoint["state_dict"] = {k: v.contiguous() for k, v in checkpoint["state_dict"].items()}

    # ----------------------------------------------------------------------------------- training
    def note_skips(self, batch: dict[str, Any]) -> None:
        for skip in batch.get("skips", ()):
            self.skipped_images.setdefault(skip["path"], skip)
        for record in batch.get("outside", ()):  # label boxes wholly outside their image: reported once an image
            if record["path"] not in self.images_with_boxes_outside:
                self.images_with_boxes_outside[record["path"]] = record
                self.decode_problems.add(OUTSIDE_IMAGE, record["origin"], record["message"])

    def on_train_epoch_start(self) -> None:
        # counted on the host (skips) and on the device (clipped boxes of the device paths), logged at the epoch's
        # end: logging a Python number at each step copies it to the GPU, and that copy waits for the device
        self._epoch_skipped: int = 0
        self._epoch_trained: int = 0
        self._epoch_clipped: torch.Tensor | int = 0

    def count_batch_problems(self, batch: dict[str, Any]) -> None:
        self._epoch_skipped = getattr(self, "_epoch_skipped", 0) + int(batch["skipped"])
        if "image" in batch:
            self._epoch_trained = getattr(self, "_epoch_trained", 0) + int(batch["image"].shape[0])
        clipped = batch.get("clipped", 0)
        self._epoch_clipped = getattr(self, "_epoch_clipped", 0) + (clipped.detach() if torch.is_tensor(clipped)
                                                                     else int(clipped))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.note_skips(batch)
        self.count_batch_problems(batch)
        if "image" not in batch:  # every image of the batch was unreadable
            if self.trainer.world_size > 1:  # the other ranks wait in the gradient all-reduce: join it with zeros
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        out = self.net(self.net_input(batch))
        losses = self.criterion(out, batch)
        total = losses["loss"]
        if self.l1_regularization > 0:  # its value here; its gradient in on_before_optimizer_step
            reg = l1_weight_penalty(self.net, self.l1_regularization)
            total = total + reg
            self.log("train/loss_l1", reg, on_step=True, on_epoch=True)
        bs = batch["image"].shape[0]
        # Not sync_dist: a rank whose batch was all unreadable logs none of these at that step, and a per-step
        # all-reduce would then wait for it forever. Under DDP these are rank 0's values; val/* are synced.
        # Not prog_bar: Lightning reads a bar value every step, a wait for the GPU (gridface.training.progress shows
        # the loss without one)
        self.log("train/loss", total, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/loss_cov", losses["loss_cov"], on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/loss_bbox", losses["loss_bbox"], on_step=True, on_epoch=True, batch_size=bs)
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The L1 regulariser's gradient, added to the back-propagated one (Lightning calls this after unscaling the
        gradients of ``16-mixed`` and before clipping them)."""
        if self.l1_regularization <= 0:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None and \
                getattr(optimizer, "_step_supports_amp_scaling", False):
            raise ValueError("loss.l1_regularization with an optimizer that unscales its own gradients (e.g. fused "
                             "Adam) under 16-mixed: its gradients are still scaled here; use fused=false or "
                             "bf16-mixed")
        add_l1_gradient(self.net, self.l1_regularization)

    def stop_if_nothing_trained(self, at_validation: bool = False) -> None:
        """Every training image of the epoch was unreadable (each named in a warning when skipped): stop, before
        validation ranks the untrained weights and writes them as a checkpoint. Called at the start of the epoch-end
        validation (a mid-epoch one has seen only part of the epoch) and at the training epoch's end (a run without
        validation); every rank calls it at the same points, the counts are summed."""
        loop = self.trainer.fit_loop.epoch_loop
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING or (
                at_validation and not loop.batch_progress.is_last_batch):
            return
        trained, skipped = getattr(self, "_epoch_trained", 0), getattr(self, "_epoch_skipped", 0)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(torch.tensor([float(trained), float(skipped)], device=self.device),
                                                  reduce_op="sum")
            trained, skipped = int(totals[0]), int(totals[1])
        if trained == 0 and skipped > 0:
            raise ValueError(f"epoch {self.current_epoch}: none of the training images could be read ({skipped} "
                             "skipped, each named in a warning above), so nothing was trained; `python -m "
                             "gridface.check_data` with this dataset lists every unusable file")

    def on_train_epoch_end(self) -> None:
        self.stop_if_nothing_trained()
        self.log("train/skipped_images", float(getattr(self, "_epoch_skipped", 0)))
        self.log("train/clipped_boxes", float(getattr(self, "_epoch_clipped", 0)))
        self.criterion.update_auto_weights()
        self.log("train/weight_cov", self.criterion.weights[0])
        self.log("train/weight_bbox", self.criterion.weights[1])

    def configure_optimizers(self):
        """``optimizer.algorithm`` called with the parameters, ``optimizer.scheduler`` with the optimizer (and
        ``total_steps`` when it takes that argument), stepped every step.

        ``total_steps`` is the run's length, read at the first step rather than here: asking for
        ``estimated_stepping_batches`` inside configure_optimizers makes Lightning (2.6) set the training data up
        before a resumed checkpoint is restored, and the loader's saved mid-epoch position is then silently dropped
        (Lightning-AI/pytorch-lightning#20550). gridface's schedule takes it as a callable; a scheduler that needs a
        number (``OneCycleLR``) gets the number, and with it that Lightning behaviour on resume."""
        from hydra.utils import instantiate  # here: loading a checkpoint for inference needs no Hydra

        cfg = optimizer_config(self.hparams.get("optimizer"))
        opt = instantiate(cfg["algorithm"], _convert_="all")(self.parameters())
        if cfg.get("scheduler") is None:
            return opt
        make_scheduler = instantiate(cfg["scheduler"], _convert_="all")
        kwargs: dict[str, Any] = {}
        params = inspect.signature(make_scheduler).parameters
        if "total_steps" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            def total_steps() -> int:
                return max(1, int(self.trainer.estimated_stepping_batches))

            lazy = getattr(getattr(make_scheduler, "func", None), "accepts_lazy_total_steps", False)
            kwargs["total_steps"] = total_steps if lazy else total_steps()
        sched = make_scheduler(opt, **kwargs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def eval_cfg(self) -> dict[str, Any]:
        """The ``evaluation`` hyper-parameters over ``configs/evaluation/default.yaml`` (iou, interpolation, coco)."""
        if self._eval_cfg is None:
            self._eval_cfg = group_default("evaluation", "default", self.hparams.get("evaluation") or {})
        return self._eval_cfg

    # --------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.stop_if_nothing_trained(at_validation=True)
        self._val_dets, self._val_gts, self._val_paths = [], [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.note_skips(batch)
        if "image" not in batch:
            return
        out = self.net(self.net_input(batch))
        bad = non_finite_names(out.items())
        if bad:
            raise NonFiniteError(f"validation at global step {self.global_step}: the network output {bad} is not "
                                 f"finite (images {batch['path'][:3]}...); the weights are broken, not the images")
        losses = self.criterion(out, batch)
        bs = batch["image"].shape[0]
        self.log("val/loss", losses["loss"], prog_bar=False, batch_size=bs, sync_dist=True)
        probs = coverage_probabilities(out)
        dets = self.decoder(probs["cov"].float().cpu(), probs["bbox"].float().cpu(), self.input_hw)
        for det, lb, gb, gl, gi in zip(dets, batch["letterbox"], batch["gt_boxes"], batch["gt_labels"],
                                       batch["gt_ignore"], strict=True):
            d, g = image_record(det, lb, gb, gl, gi, self.decoder.min_height)
            self._val_dets.append(d)
            self._val_gts.append(g)
        self._val_paths.extend(batch["path"])

    def on_validation_epoch_end(self) -> None:
        dets, gts, paths = self._val_dets, self._val_gts, self._val_paths
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (dets, gts, paths))
            # The distributed sampler pads the last batches with repeats of the first images: each image once.
            seen: set[str] = set()
            dets, gts, paths = [], [], []
            for part in gathered:
                for det, gt, path in zip(*part, strict=True):
                    if path not in seen:
                        seen.add(path)
                        dets.append(det)
                        gts.append(gt)
                        paths.append(path)
        if not gts:
            # Nothing to measure. NaN, not silence: ModelCheckpoint(monitor=val/AP50) raises when the key it
            # monitors is missing after validation ran, and NaN is Lightning's own "no score": ModelCheckpoint ranks
            # it below any real score (it never replaces a measured best.ckpt), loggers show a gap, EarlyStopping
            # (check_finite) stops. The skipped images were each reported above, with their label lines.
            when = "the sanity check" if self.trainer.sanity_checking else f"epoch {self.current_epoch}"
            if self.trainer.is_global_zero:
                log.warning("%s: no validation image could be read (each unreadable file is named in the warning "
                            "logged when it was first skipped); val/AP50 and the other detection metrics are NaN "
                            "for this validation, which never replaces a measured best checkpoint", when)
            self._log_validation({**dict.fromkeys(self.metric_names(), float("nan")), "images": 0.0})
            return
        metrics = {**self.compute_metrics(dets, gts, paths), "images": float(len(gts))}
        self._log_validation(metrics)
        if not self.trainer.sanity_checking:
            self.set_score_threshold()
        if not self.trainer.sanity_checking:
            rank_zero_info(f"epoch {self.current_epoch}: " + ", ".join(f"val/{k}={v:.4f}" for k, v in metrics.items()
                                                                        if k != "images") + f" ({len(gts)} images)")

    def _log_validation(self, metrics: dict[str, float]) -> None:
        """``val/<name>`` with the same logging options whether measured or NaN: Lightning refuses a key logged
        again with other options in one run (a sanity check that could read no image, then a real validation)."""
        for k, v in metrics.items():
            self.log(f"val/{k}", v, prog_bar=k in ("AP50", "mAP"), rank_zero_only=True)

    def metric_names(self) -> list[str]:
        """The names :meth:`compute_metrics` returns (without measuring anything)."""
        return detection_metric_names(self.class_names, self.eval_cfg)

    def compute_metrics(self, dets: list, gts: list, paths: list[str] | None = None) -> dict[str, float]:
        """The metrics ``gridface.evaluate`` reports, under the same names (logged here as ``val/<name>``)."""
        cfg = self.eval_cfg
        if cfg.get("wider_gt") and paths and self._wider_gt is None:
            from gridface.evaluation.widerface import load_ground_truth

            self._wider_gt = load_ground_truth(cfg["wider_gt"])
        measured = detection_metrics(dets, gts, list(self.class_names), cfg, paths, self._wider_gt,
                                     max_detections=self.decoder.max_detections)
        self.operating_point = f1_best_threshold(measured.curves)
        return measured.values

    def set_score_threshold(self) -> None:
        """The model's own operating point: the F1-best score threshold of this validation (every box matched to
        the faces at the evaluation IoU), recorded as ``postprocess.score_threshold`` in the hyper-parameters, so
        each checkpoint (and every model exported from it) carries the threshold of its own weights. Logged as
        ``val/score_threshold`` and ``val/F1``; validation's AP still ranks every box."""
        point = self.operating_point
        if point is None:
            return
        self.hparams["postprocess"] = {**(self.hparams.get("postprocess") or {}),
                                       "score_threshold": round(point["score_threshold"], 6)}
        self.decoder.score_threshold = self.hparams["postprocess"]["score_threshold"]
        for k in ("score_threshold", "F1"):
            self.log(f"val/{k}", point[k], rank_zero_only=True)
