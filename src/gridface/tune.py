"""``python -m gridface.tune``: hyperparameter search with Optuna over the training config.

Each trial is a training run (:func:`gridface.stages.train.run`) with the trial's values set on the config, in its
own folder under the study's; Optuna's TPE proposes, its median pruner stops trials that trail at the same
epoch. Workers (one per Slurm job under ``-m hydra/launcher=slurm tune.worker=0,1,...``) share the study
through ``tune.storage``; Optuna does the coordination.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import shlex
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from gridface.accelerator import check_gpu_available
from gridface.module import validation_metric_names
from gridface.stages.train import run as train_run
from gridface.utils.errors import optional_import, user_errors
from gridface.utils.finite import NonFiniteError
from gridface.utils.hydra import config_dir, override, stage_config
from gridface.utils.io import write_json, write_text

log = logging.getLogger(__name__)
OVERRIDES_ATTR = "gridface_study_overrides"  # the study's command-line overrides (tune.* left out), in the study


def make_storage(spec: str) -> Any:
    """``journal:<file>``: Optuna's JournalStorage (safe on NFS); anything else an RDB URL (``sqlite:///...``)."""
    import optuna

    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(spec.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite:///"):
        db = Path(spec.removeprefix("sqlite:///")).expanduser()
        db.parent.mkdir(parents=True, exist_ok=True)
        # workers started together each created the schema at once: one failed ("UNIQUE constraint failed:
        # alembic_version.version_num"); one at a time, the later ones find it made
        with open(db.with_name(f"{db.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return optuna.storages.RDBStorage(spec)
    return spec


SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}


def flat_search_space(space: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """``tune.search_space`` as ``{dotted.training.key: spec}``: nested (as the training config is, so
    ``tune.search_space.optimizer.max_lr.high=`` narrows a range and ``+tune.search_space.optimizer.weight_decay=``
    adds one) or dotted, or both. A spec is a mapping of :data:`SPEC_KEYS`."""
    flat: dict[str, dict[str, Any]] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict) or not value:
            raise ValueError(f"tune.search_space.{name} = {value!r}: give {{type: float|int|categorical, low:, "
                             "high:, log:, step:, choices:}} for a training key")
        if set(value) <= SPEC_KEYS:
            flat[name] = value
        elif set(value) & SPEC_KEYS:
            raise ValueError(f"tune.search_space.{name}: {sorted(set(value) - SPEC_KEYS)} are not among "
                             f"{sorted(SPEC_KEYS)}")
        else:
            flat.update(flat_search_space(value, f"{name}."))
    return flat


def suggest(trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
    """The trial's value for every key of ``tune.search_space``."""
    values = {}
    for key, spec in search_space.items():
        kind = spec.get("type", "float")
        if kind == "float":
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                              step=spec.get("step"))
        elif kind == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                            step=spec.get("step", 1))
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            raise ValueError(f"tune.search_space.{key}.type must be float, int or categorical, got '{kind}'")
    return values


class ReportToTrial(pl.Callback):
    """Reports the metric to the Optuna trial after each validation and stops the trial when the pruner says
    so (rank 0 decides; trials here run in one process)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import optuna

        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.metric]), step=trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} trails the median at epoch {trainer.current_epoch}")


def check_search_keys(cfg: DictConfig, keys: list[str]) -> None:
    """Each searched key names one value of the training config (not a group of settings)."""
    for key in keys:
        node = OmegaConf.select(cfg, key, default="__missing__")
        if isinstance(node, str) and node == "__missing__":
            raise ValueError(f"tune.search_space: '{key}' is not a key of the training config")
        if isinstance(node, DictConfig):
            raise ValueError(f"tune.search_space: '{key}' is a group of settings, not one value; search a key in it "
                             f"(e.g. {key}.{next(iter(node), 'x')}); config groups (network=, recipe=) are not "
                             "searched")


def trial_config(cfg: DictConfig, values: dict[str, Any], folder: Path) -> DictConfig:
    """The study's config with the trial's values as ``key=value`` overrides, through stage_config's override path:
    the same parser and override step as the command line, so a search-space key means what it means there. Applied
    to ``cfg`` rather than re-composed: tune receives the study's config already composed (by ``@hydra.main`` from
    the user's command line, or by a caller who may have changed it), and re-composing would need those overrides
    again and lose a caller's changes."""
    check_search_keys(cfg, list(values))
    # ckpt_path=null: a trial never resumes another trial's checkpoint
    args = [*(override(key, value) for key, value in values.items()), "ckpt_path=null", "~tune"]
    return stage_config("tune", args, base=cfg, output_dir=folder)


def study_overrides() -> list[str]:
    """The study's own command-line overrides (its experiment, data, ...), without the tune.* ones; [] when tune runs
    without Hydra's command line (called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("tune.")]


def train_command(overrides: list[str], values: dict[str, Any]) -> str:
    """The command that trains the best trial: the study's overrides, then the trial's values."""
    args = [*overrides, *(override(key, value) for key, value in values.items())]
    return " ".join(["python -m gridface.train", *(shlex.quote(a) for a in args)])


def best_experiment(values: dict[str, Any], value: float, metric: str, number: int, command: str = "") -> str:
    """The best trial as an experiment file: only the keys the search changed (the study's own overrides, such as its
    experiment=, are not in it: ``command`` repeats them, and is written in the header)."""
    nested: dict[str, Any] = {}
    for key, v in values.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    header = f"# @package _global_\n# best trial {number} of the study: {metric} = {value:.4f}\n"
    if command:
        header += f"# trains it with the study's other settings: {command}\n"
    return header + OmegaConf.to_yaml(OmegaConf.create(nested))


def trials_csv(trials: list[Any], keys: list[str]) -> str:
    """Every trial of the study, one row each: number, state, value, worker, the searched values, folder, and why a
    trial failed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "value", "worker", *keys, "folder", "reason"])
    for t in trials:
        value = "" if t.value is None else f"{t.value:.6g}"
        writer.writerow([t.number, t.state.name, value, t.user_attrs.get("worker", ""),
                         *(t.params.get(k, "") for k in keys), t.user_attrs.get("folder", ""),
                         t.user_attrs.get("reason", "")])
    return out.getvalue()


def run(cfg: DictConfig) -> dict[str, Any]:
    optuna = optional_import("optuna", "gridface.tune", 'pip install -e ".[tune]"')
    check_gpu_available(cfg.trainer.get("accelerator"))  # once, not as a failed trial each

    tc = cfg.tune
    if tc.pruner not in ("median", "none"):
        raise ValueError(f"tune.pruner = '{tc.pruner}': must be median or none")
    logged = validation_metric_names(list(cfg.module.class_names), OmegaConf.to_container(cfg.module.evaluation,
                                                                                          resolve=True))
    if tc.metric not in logged:  # before the study, not after a whole trial has trained
        raise ValueError(f"tune.metric = '{tc.metric}': not a metric training logs; one of {', '.join(logged)}")
    study_dir = Path(tc.dir)
    sampler = optuna.samplers.TPESampler(seed=tc.seed)
    pruner = (optuna.pruners.MedianPruner(n_warmup_steps=int(tc.pruner_warmup_epochs))
              if tc.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=tc.study_name, storage=make_storage(str(tc.storage)), sampler=sampler,
                                pruner=pruner, direction=tc.direction, load_if_exists=True)
    space = flat_search_space(OmegaConf.to_container(tc.search_space, resolve=True))
    check_search_keys(cfg, list(space))  # before the study: a bad key was a FAIL trial, or a traceback
    # the study's own settings (its experiment, data, epochs...): trials trained under others cannot be ranked with
    # its trials, and best.json's command must be the one its trials ran under
    overrides = sorted(study_overrides())
    recorded = study.user_attrs.get(OVERRIDES_ATTR)
    if recorded is None:
        study.set_user_attr(OVERRIDES_ATTR, overrides)
    elif recorded != overrides:
        raise ValueError(f"tune.study_name={tc.study_name}: the study was started with the overrides {recorded}, "
                         f"this run gives {overrides}; trials trained under other settings cannot be ranked with "
                         "its trials: give the study's overrides again, or another tune.study_name")

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        folder = study_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr("worker", str(tc.worker))
        try:
            result = train_run(trial_config(cfg, values, folder), callbacks=[ReportToTrial(trial, tc.metric)])
        except NonFiniteError as e:
            trial.set_user_attr("reason", str(e))
            raise
        except SystemExit as e:
            if isinstance(e.__context__, KeyboardInterrupt):  # Lightning ends a Ctrl-C'd fit with sys.exit(1), which
                trial.set_user_attr("reason", "interrupted (Ctrl-C)")  # Optuna does not catch: the trial stayed
                raise KeyboardInterrupt from e  # RUNNING in the study for good; as an interrupt it is a FAIL
            raise
        if tc.metric not in result["metrics"]:
            raise ValueError(f"tune.metric '{tc.metric}' was not logged; logged: {sorted(result['metrics'])}")
        return result["metrics"][tc.metric]

    timeout = float(tc.timeout_min) * 60 if tc.get("timeout_min") else None
    # a trial that diverges (a NaN loss at a high learning rate) is a result, not the end of the study: Optuna
    # records it as FAIL with the guard's message, and the sampler steers away from it
    study.optimize(objective, n_trials=int(tc.n_trials), timeout=timeout, catch=(NonFiniteError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary = {"study": tc.study_name, "storage": str(tc.storage), "worker": str(tc.worker),
               "trials": len(study.trials), "complete": len(done),
               "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
               "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)}
    if done:
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params})
        summary["train_command"] = train_command(study.user_attrs.get(OVERRIDES_ATTR, overrides), best.params)
        write_text(study_dir / "experiment" / "best.yaml", best_experiment(best.params, best.value, tc.metric,
                                                                          best.number, summary["train_command"]))
        write_json(study_dir / "best.json", summary)
    write_text(study_dir / "trials.csv", trials_csv(study.trials, list(space)))
    log.info("study %s: %d trials (%d complete, %d pruned, %d failed); best %s", tc.study_name, summary["trials"],
             summary["complete"], summary["pruned"], summary["failed"], summary.get("best_params"))
    return summary


@hydra.main(config_path=config_dir(), config_name="tune", version_base="1.3")
@user_errors("tune")
def main(cfg: DictConfig) -> float | None:
    return run(cfg).get("best_value")


if __name__ == "__main__":
    main()
