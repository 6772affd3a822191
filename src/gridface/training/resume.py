"""Where a training run resumes from: ``ckpt_path=auto`` takes the newest resumable checkpoint of the run folder,
so a requeued or restarted job (same folder) goes on from where it stopped (a requeued job given an explicit
``ckpt_path`` too); :class:`LastCheckpoint` keeps ``last.ckpt`` at the newest epoch, :class:`StepCheckpoint`
``step.ckpt`` every N steps."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from gridface.utils.checkpoint import zip_problem

log = logging.getLogger(__name__)

RESUMABLE = ("last.ckpt", "step.ckpt", "preempted.ckpt")  # what ckpt_path=auto picks from, newest first
SETTINGS_KEY = "gridface_training_settings"  # in each checkpoint: what the run trains (training_settings)
SLURM_JOB_KEY = "gridface_slurm_job_id"  # in each checkpoint: the Slurm job that wrote it (a requeue keeps the id)
MEASURE_KEY = "gridface_measure_settings"  # in each checkpoint: how val/AP50 was measured (measure_settings)
# what val/AP50 depends on besides the weights: a resume may change these, and its scores then mean something else
MEASURED = ("module.evaluation.iou", "module.evaluation.interpolation", "module.postprocess")
BEFORE_REMEASURE = "{stem}_until_resume.ckpt"  # the best checkpoint under the earlier measure, kept under this name
# what decides what a run trains: a resume under other values would continue a different run
COMPARED = ("module", "datamodule", "seed", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val",
            "trainer.gradient_clip_algorithm", "callbacks.prune.spec", "callbacks.quantize")
# ...except how fast data is read or the step runs, the weights a run started from (a resume starts from its
# checkpoint), and where files lie (a path is compared as "a path": data roots and annotation files may move between
# machines or Slurm nodes)
NOT_COMPARED = ("root", "num_workers", "decode", "prefetch", "compile", "channels_last", "pretrained", "init_from")
# ...nor how validation measures and clusters (AP's IoU, the WIDER ground truth, DBSCAN/NMS): they never reach the
# weights, and a resume may add the WIDER .mat folder (dataset.eval_gt) or change the clustering
NOT_COMPARED_NODES = ("module.evaluation", "module.postprocess",
                      # how a QAT run starts (its ranges' first calibration, the model= it starts from): a resume
                      # takes the quantizers and their ranges from its checkpoint
                      "callbacks.quantize.calibration_batches", "callbacks.quantize.require_model",
                      "callbacks.quantize.model")
# what a resume restores from the checkpoint whatever the config says: changed, they would silently not apply
RESTORED_WITH_THE_RUN = ("module.optimizer",)
# the network's shape: a checkpoint of another cannot be loaded at all
WIDTHS_KEY = "module.model.widths"  # a pruned start's widths (from model=, not the config): see started_widths
# (fake quantizers are part of it: a QAT checkpoint's state holds their ranges, a float one has none to load)
QUANTIZE = "callbacks.quantize"
SHAPE = ("module.model.backbone", WIDTHS_KEY, "module.class_names", f"{QUANTIZE}._target_", f"{QUANTIZE}.base",
         f"{QUANTIZE}.float_modules")
# keys older checkpoints do not record: not a change when absent from them (a float run's callbacks.quantize: null)
RECORDED_SINCE = (WIDTHS_KEY, QUANTIZE)
A_PATH = "<a path>"


def is_path(value: Any) -> bool:
    return isinstance(value, str) and (os.sep in value or value.startswith("~"))


def training_settings(cfg: DictConfig) -> dict[str, Any]:
    """The training config's keys that decide what a run trains, resolved and flattened to ``dotted.key: value``.
    ``trainer.max_epochs`` and the like are not among them: extending a finished run is a resume."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if not compared(prefix):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif prefix.rsplit(".", 1)[-1] not in NOT_COMPARED:
            flat[prefix] = A_PATH if is_path(value) else value

    for key in COMPARED:
        node = OmegaConf.select(cfg, key, default=None)
        walk(key, OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    widths = started_widths(OmegaConf.select(cfg, "module.model.init_from", default=None))
    if widths:  # a retrain of a pruned model: its shape comes from the file model= names, not from the config
        flat[WIDTHS_KEY] = widths
    return flat


def started_widths(init_from: str | None) -> str | None:
    """The pruned widths of the checkpoint a run starts from (``model=``), as a short digest; None when unpruned."""
    if not init_from or not Path(init_from).expanduser().is_file():
        return None
    try:
        hp = _saved(Path(init_from).expanduser(), "hyper_parameters") or {}
    except Exception:  # noqa: BLE001 - the module's own load names what is wrong with the file
        return None
    widths = (hp.get("model") or {}).get("widths")
    if not widths:
        return None
    digest = hashlib.sha256(json.dumps(widths, sort_keys=True).encode()).hexdigest()[:12]
    return f"pruned ({sum(w[-1] for w in widths.values())} channels, {digest})"


def measure_settings(cfg: DictConfig) -> dict[str, Any]:
    """How validation scores the weights (:data:`MEASURED`: AP's IoU and interpolation, the clustering), flattened
    to ``dotted.key: value``; the model's recorded operating point (``score_threshold``) is not applied there."""
    flat: dict[str, Any] = {}
    for key in MEASURED:
        node = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        for k, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            if k != "score_threshold":
                flat[f"{key}.{k}" if k else key] = v
    return flat


def compared(key: str) -> bool:
    """Whether the dotted ``key`` is among the training settings (not under :data:`NOT_COMPARED_NODES`)."""
    return not any(key == node or key.startswith(node + ".") for node in NOT_COMPARED_NODES)


def changed_settings(saved: dict[str, Any], now: dict[str, Any], shown: int = 4,
                     under: tuple[str, ...] | None = None) -> str:
    """``key: old -> new`` for the first ``shown`` keys that differ (only those under the nodes ``under``, when
    given), and how many more; '' when none. Keys no longer compared are passed over (a checkpoint of an older
    gridface holds them), and so are keys recorded only since (:data:`RECORDED_SINCE`) that it lacks."""
    keys = sorted(k for k in saved.keys() | now.keys()
                  if compared(k) and (under is None or any(k == n or k.startswith(n + ".") for n in under))
                  and not (k in RECORDED_SINCE and k not in saved)
                  and saved.get(k, "<unset>") != now.get(k, "<unset>"))
    lines = [f"{k}: {saved.get(k, '<unset>')} -> {now.get(k, '<unset>')}" for k in keys[:shown]]
    return "; ".join(lines) + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def resume_as_trained(shape_changes: str) -> str:
    """How to resume a checkpoint whose network this run's settings cannot load (``shape_changes``, from
    :func:`changed_settings` under :data:`SHAPE`)."""
    if QUANTIZE in shape_changes:
        return ("resume it with the quantization it was trained with (experiment=qat, or callbacks/quantize=qat, and "
                "the same callbacks.quantize.* values; a float run without them)")
    return "resume it with the settings it was trained with (network=, model=, dataset.class_names=)"


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path,
                      settings: dict[str, Any] | None = None) -> str | None:
    """``auto``: the newest readable of the run folder's resumable checkpoints, or None for a fresh run. A damaged
    one is skipped with a warning; one written under other ``settings`` (:func:`training_settings`) is refused,
    since resuming it would train neither run. A path is checked and returned as given (an explicit resume), but
    in a requeued Slurm job the newest checkpoint this job wrote into its run folder wins, as Lightning's requeue
    checkpoint does: the requeued command still names the checkpoint the job first started from, and taking it again
    would throw away everything the job trained before it was preempted, at every requeue."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        return _newest_of_run(output_dir, settings)
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint not found: {ckpt_path}")
    problem = zip_problem(path)
    if problem:
        raise ValueError(f"ckpt_path={ckpt_path}: {problem}")
    saved = _saved(path, SETTINGS_KEY)
    shape = changed_settings(saved, settings, under=SHAPE) if saved and settings else ""
    if shape:
        raise ValueError(f"ckpt_path={ckpt_path}: {shape}: the checkpoint holds another network, which this run "
                         f"cannot load; {resume_as_trained(shape)}, or start from its weights with model= where the "
                         "network is the same")
    restored = changed_settings(saved, settings, under=RESTORED_WITH_THE_RUN) if saved and settings else ""
    if restored:
        raise ValueError(
            f"ckpt_path={ckpt_path}: {restored}: a resume restores the optimizer and its learning-rate schedule from "
            "the checkpoint, so these would not take effect (and its checkpoints would record them as if they had). "
            f"Start a new run from its weights instead: model={ckpt_path} in a new folder")
    restarts, job = int(os.environ.get("SLURM_RESTART_COUNT") or 0), os.environ.get("SLURM_JOB_ID")
    if restarts and job:
        try:
            own = _newest_of_run(output_dir, settings, quiet=True)
        except ValueError:  # other settings, or all damaged: not this job's progress
            own = None
        if own and Path(own).resolve() != path.resolve() and _saved(own, SLURM_JOB_KEY) == job:
            log.info("resuming from %s, not ckpt_path=%s: this Slurm job (%s) was requeued (SLURM_RESTART_COUNT=%d) "
                     "and that is the newest checkpoint it wrote", own, ckpt_path, job, restarts)
            return own
    return str(ckpt_path)


def _saved(path: str | Path, key: str) -> Any:
    """One top-level entry of a checkpoint, read without loading its tensors."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True).get(key)


def _newest_of_run(output_dir: str | Path, settings: dict[str, Any] | None, quiet: bool = False) -> str | None:
    """``ckpt_path=auto``: the newest readable resumable checkpoint of the run folder ``output_dir`` (None if it
    has none); ValueError when it was trained under other ``settings`` or every one is damaged."""
    found = [p for p in (Path(output_dir) / "checkpoints" / name for name in RESUMABLE) if p.is_file()]
    for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        problem = zip_problem(path)
        if problem:
            if not quiet:
                rank_zero_warn(f"ckpt_path=auto: not resuming from {path}: {problem}; trying an older checkpoint")
            continue
        saved = _saved(path, SETTINGS_KEY)
        changed = changed_settings(saved, settings) if saved is not None and settings is not None else ""
        if changed:
            restored = changed_settings(saved, settings, under=RESTORED_WITH_THE_RUN)
            shape = changed_settings(saved, settings, under=SHAPE)
            go_on = (resume_as_trained(shape) if shape else
                     f"start from its weights with model={path} (a resume keeps its optimizer and schedule)"
                     if restored else f"continue that run under the new settings with ckpt_path={path}")
            raise ValueError(
                f"ckpt_path=auto: {Path(output_dir)} holds a run trained with other settings ({changed}), and "
                "resuming it would train neither. Train in a new folder (hydra.run.dir=<folder>, or "
                f"hydra.sweep.dir= for -m), or {go_on}")
        if not quiet:
            log.info("resuming from %s (ckpt_path=auto: the newest checkpoint of this run folder)", path)
        return str(path)
    if found:
        raise ValueError(f"ckpt_path=auto: every checkpoint in {Path(output_dir) / 'checkpoints'} is damaged (see the "
                         "warnings above); move them away to start afresh there, or give ckpt_path= a good one")
    return None


class TrainingSettingsRecord(pl.Callback):
    """Writes :func:`training_settings` into every checkpoint, for ``ckpt_path=auto`` to compare, the Slurm job
    that wrote it, for a requeued job to tell its own checkpoints (:func:`resolve_ckpt_path`), and
    :func:`measure_settings`. A resume that measures validation otherwise (another IoU or clustering: allowed, they
    never reach the weights) would rank its scores against the earlier ones for best.ckpt, which are not comparable:
    the earlier best is kept as ``best_until_resume.ckpt`` and the best checkpoint is tracked afresh."""

    def __init__(self, settings: dict[str, Any], measure: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.measure = measure
        self._remeasured = ""  # what changed, when the restored checkpoint was measured otherwise

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[SETTINGS_KEY] = self.settings
        checkpoint[SLURM_JOB_KEY] = os.environ.get("SLURM_JOB_ID")
        if self.measure is not None:
            checkpoint[MEASURE_KEY] = self.measure

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        follow_a_moved_run(trainer, checkpoint)
        saved = checkpoint.get(MEASURE_KEY)
        if saved is not None and self.measure is not None:
            keys = sorted(k for k in saved.keys() | self.measure.keys() if saved.get(k) != self.measure.get(k))
            self._remeasured = "; ".join(f"{k}: {saved.get(k)} -> {self.measure.get(k)}" for k in keys)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._remeasured:
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or cb.monitor is None or isinstance(cb, LastCheckpoint):
                continue
            kept = ""
            if cb.best_model_path and Path(cb.best_model_path).is_file():
                old = Path(cb.best_model_path)
                kept = str(old.with_name(BEFORE_REMEASURE.format(stem=old.stem)))
                if trainer.is_global_zero:
                    os.replace(old, kept)
            if trainer.is_global_zero:
                log.warning("this resume measures %s otherwise (%s): its scores are not comparable with the earlier "
                            "ones, so the best checkpoint is tracked afresh from here%s", cb.monitor, self._remeasured,
                            f"; the earlier best ({cb.monitor}={float(cb.best_model_score):.4f}) is kept as {kept}"
                            if kept and cb.best_model_score is not None else "")
            cb.best_k_models, cb.best_model_path, cb.kth_best_model_path = {}, "", ""
            cb.best_model_score = None
            cb.kth_value = torch.tensor(float("inf") if cb.mode == "min" else float("-inf"))


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` after every epoch (after its validation), whatever the metric did.

    Lightning 2.6's ``save_last`` writes ``last.ckpt`` only when a top-k checkpoint is saved at the same step, so
    with ``save_top_k: 1`` on ``val/AP50`` it stayed at the best epoch and a resume repeated every epoch since. This
    is Lightning's metric-free ModelCheckpoint (one file, overwritten), under the name resumes look for."""

    def __init__(self, dirpath: str, **kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         enable_version_counter=False, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Also the final step of a run that ended where no validation followed (``trainer.max_steps`` inside an
        epoch, or a last epoch ``check_val_every_n_epoch`` skipped): saved after validations only, last.ckpt would
        hold an earlier step. A run extended from a mid-epoch one goes on inside that epoch (tests/test_resume.py)."""
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips when this step is saved already
            with saved_as_mid_epoch(trainer):
                self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with saved_as_mid_epoch(trainer):
            super().on_train_epoch_end(trainer, pl_module)


def validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """This batch ends the epoch, or a validation runs right after it (``val_check_interval``). A checkpoint saved
    here resumes wrongly: Lightning counts that epoch as done without its validation, and enters the next one
    without counting it as started, so a resume from a checkpoint of that epoch trained it a second time."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch:
        return True
    every = trainer.val_check_batch
    if not (isinstance(every, int) and every > 0):
        return False
    # as Lightning counts: across epochs when validation is by steps alone (check_val_every_n_epoch=null)
    index = loop.total_batch_idx if getattr(trainer, "check_val_every_n_epoch", 1) is None else batch_idx
    return (index + 1) % every == 0


class StepCheckpoint(ModelCheckpoint):
    """``checkpoints/step.ckpt`` every ``every_n_train_steps`` steps (one file, overwritten). A step that a
    validation follows (:func:`validation_follows`) is saved after that validation: at the epoch's end, or at the
    next optimizer step that no validation follows. Saved before it, a resume skipped the validation, and a run
    killed twice after such saves trained an epoch twice (24 steps for 18)."""

    def __init__(self, dirpath: str, every_n_train_steps: int, **kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename="step", every_n_train_steps=every_n_train_steps, save_top_k=1,
                         enable_version_counter=False, **kwargs)
        self._deferred: int | None = None  # the global step whose save waits for a validation

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        follows = validation_follows(trainer, batch_idx)
        # the first optimizer step after a mid-epoch validation (not a batch inside a gradient accumulation) saves
        # the deferred step, unless a validation follows it too (the epoch's last batch): then after that one
        due = self._deferred is not None and trainer.global_step > self._deferred
        if self._deferred is not None and not due:  # the rest of the put-off step's gradient accumulation
            return
        every = self._every_n_train_steps
        if follows and (due or (every > 0 and trainer.global_step % every == 0)):
            self._deferred = trainer.global_step
            return
        if due:
            self._save_deferred(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resumed run's step is saved already (Lightning's count of saved steps starts again at 0): its first
        batch, inside the restored step's gradient accumulation, saved it again there."""
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._deferred is not None:
            with saved_as_mid_epoch(trainer):  # an epoch cut short by max_steps or max_time: resumed inside it
                self._save_deferred(trainer)

    def _save_deferred(self, trainer: pl.Trainer) -> None:
        self._deferred = None
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def follow_a_moved_run(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """A run folder moved or copied elsewhere (another disk, another cluster) and resumed there: Lightning restores a
    ModelCheckpoint's ranking only when its folder is the one saved, so the moved run lost its best score, and a
    longer run wrote ``best-v1.ckpt`` beside a stale ``best.ckpt``. When each file the saved state names lies in
    this run's checkpoint folder under its name, the state is taken over with the new paths."""
    states = checkpoint.get("callbacks") or {}
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.state_key not in states or cb.dirpath is None:
            continue
        state = states[cb.state_key]
        old, new = state.get("dirpath"), str(cb.dirpath)
        if not old or old == new:
            continue
        named = [p for p in (state.get("best_model_path"), state.get("kth_best_model_path"),
                             state.get("last_model_path"), *(state.get("best_k_models") or {})) if p]

        def moved(path: str, folder: str = new) -> str:
            return str(Path(folder) / Path(path).name) if path else path

        if not named or not all(Path(moved(p)).is_file() for p in named):
            continue  # not this run's files: Lightning's own warning and behaviour
        states[cb.state_key] = {
            **state, "dirpath": new, "best_model_path": moved(state.get("best_model_path", "")),
            "kth_best_model_path": moved(state.get("kth_best_model_path", "")),
            "last_model_path": moved(state.get("last_model_path", "")),
            "best_k_models": {moved(p): v for p, v in (state.get("best_k_models") or {}).items()}}
        if trainer.is_global_zero:
            log.info("the run was moved from %s: its checkpoint ranking goes on in %s", old, new)


@contextmanager
def saved_as_mid_epoch(trainer: pl.Trainer) -> Iterator[None]:
    """While a checkpoint is saved: an epoch cut short by ``trainer.max_steps`` or ``max_time`` counted as not
    processed. Lightning ends such an epoch as if it were whole (``on_train_epoch_end``), and a resume from its
    checkpoint went on with the next epoch, without the rest of this one and its validation (an extended run ended
    steps short of the uninterrupted one). Saved as a mid-epoch stop, the resume finishes the epoch from the
    loader's saved position."""
    progress = trainer.fit_loop.epoch_progress
    batches = trainer.fit_loop.epoch_loop.batch_progress
    cut_short = not batches.is_last_batch and batches.current.completed < trainer.num_training_batches
    saved = (progress.current.processed, progress.current.completed, progress.total.processed,
             progress.total.completed)
    if cut_short:
        for tracker in (progress.current, progress.total):
            tracker.processed = tracker.completed = tracker.started - 1
    try:
        yield
    finally:
        (progress.current.processed, progress.current.completed, progress.total.processed,
         progress.total.completed) = saved


def last_checkpoint_path(trainer: pl.Trainer) -> str:
    """The run's ``last.ckpt`` once written this run (or restored with it), else ''."""
    return next((cb.best_model_path for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, LastCheckpoint) and cb.best_model_path), "")
