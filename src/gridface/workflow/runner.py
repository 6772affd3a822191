"""TAO's FaceDetect notebook as a graph of stages: train -> prune -> retrain -> export (ONNX FP32, INT8; TensorRT
engines where TensorRT runs) -> evaluate every artifact -> infer on sample images -> benchmark -> report.

Each stage runs one of :mod:`gridface.stages` with a config built by :func:`gridface.utils.hydra.stage_config`
from the overrides its command line would take, once per stage: the object recorded in the manifest is the one the
stage runs with. It writes into ``<run>/<stage>/``, reads only what the stages before it wrote, and records both in a
manifest (:mod:`gridface.workflow.manifest`). A rerun skips every stage whose record still stands.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gridface.accelerator import check_gpu_available
from gridface.utils.hydra import flat_overrides, override, stage_config
from gridface.workflow.artifacts import ARTIFACTS
from gridface.workflow.manifest import (
    StageRecord,
    file_sha256,
    read_manifest,
    why_not_resumable,
    why_stale,
    write_manifest,
    write_start,
)
from gridface.workflow.submit import launcher_cluster, submit_stage

log = logging.getLogger(__name__)

@dataclass
class Stage:
    name: str
    inputs: dict[str, tuple[str, str]]              # input -> (stage, output)
    run: Callable[[PipelineRun, Path, dict[str, Path], Any], dict[str, Path]]  # ..., the config it runs with
    config: Callable[[PipelineRun, Path, dict[str, Path]], Any]  # built once a stage; its resolve() is recorded
    optional_inputs: bool = False                    # run on whichever inputs exist (benchmark, report)
    unavailable: Callable[[], str | None] | None = None  # why it cannot run on this machine (no TensorRT), or None
    given_inputs: Callable[[DictConfig], dict[str, Path]] | None = None  # files the user names (model=), not a stage


@dataclass
class PipelineRun:
    cfg: DictConfig
    root: Path
    records: dict[str, StageRecord] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outdated: dict[str, str] = field(default_factory=dict)  # stages left out of pipeline.stages whose inputs moved on

    # ---- configs of the stages: gridface.utils.hydra.stage_config, from the overrides of each stage's command
    def training_config(self, folder: Path, model: Path | None, changes: dict[str, Any]) -> DictConfig:
        """The pipeline's config is the user's training command line plus ``pipeline``: train and retrain take it
        with ``changes`` (``pipeline.train``/``retrain``) as ``++key=value`` overrides, through stage_config's
        override path. Not re-composed from ``train.yaml``: that would need the command line's overrides (hydra's
        search path ones too) in every process that builds it, a Slurm job or a caller of run_pipeline included;
        the pipeline's config already is that composition, so the manifests' configs stay what they were."""
        args = ["~pipeline", override("model", str(model) if model else None), "print_config=false",
                *(override(key, value, "++") for key, value in (changes or {}).items())]
        return stage_config("train", args, base=self.cfg, output_dir=folder)

    def stage_config(self, name: str, folder: Path, overrides: list[str]) -> DictConfig:
        """``configs/<name>.yaml`` composed with ``overrides``, writing into ``folder``, with the pipeline's
        cache and log folders."""
        return stage_config(name, overrides, output_dir=folder, cache_dir=self.cfg.paths.cache_dir,
                            log_dir=self.cfg.paths.log_dir)


def resolved(cfg: Any) -> Any:
    """A stage's config as plain data for its manifest: resolved, or as written where a key only resolves inside
    the stage (a stage config's ``dataset`` comes from the model it reads)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


# ---- the stages -------------------------------------------------------------------------------------------------

def training_stage_config(changes_key: str) -> Callable[[PipelineRun, Path, dict[str, Path]], DictConfig]:
    def config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
        changes = OmegaConf.to_container(ctx.cfg.pipeline[changes_key], resolve=True)
        return ctx.training_config(folder, inputs.get("model"), changes)
    return config


def run_training(changes_key: str) -> Callable[[PipelineRun, Path, dict[str, Path], DictConfig], dict[str, Path]]:
    def run(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: DictConfig) -> dict[str, Path]:
        from gridface.stages.train import is_rank_zero
        from gridface.stages.train import run as train_run
        from gridface.utils.io import write_json

        result = train_run(cfg)  # ckpt_path=auto: an interrupted stage resumes from its own last checkpoint
        if is_rank_zero():
            write_json(folder / "result.json", result)
        best = result.get("best_checkpoint") or result.get("last_checkpoint")
        if not best or not Path(best).is_file():
            raise RuntimeError(f"{changes_key}: training saved no checkpoint in {folder}")
        return {"checkpoint": Path(best), "result": folder / "result.json"}
    return run


def prune_overrides(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> list[str]:
    """The prune command line; the pipeline's prune group (``prune@pipeline.prune``) as its option and keys, after
    ``prune_args`` so that it wins, as it always has."""
    prune = OmegaConf.to_container(ctx.cfg.pipeline.prune, resolve=True)
    # latency.input_hw=null: MACs at the size the model trained at, as the report's rows count them
    return [override("model", str(inputs["model"])), override("output_dir", str(folder)), "latency.reps=0",
            "latency.input_hw=null", "evaluate=false", *list(ctx.cfg.pipeline.prune_args), f"prune={prune['mode']}",
            *flat_overrides("prune", prune)]


def prune_config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
    return ctx.stage_config("prune", folder, prune_overrides(ctx, folder, inputs))


def run_prune(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: DictConfig) -> dict[str, Path]:
    from gridface.stages.prune import run

    report = run(cfg)
    return {"checkpoint": Path(report["pruned_checkpoint"]), "report": folder / "prune_report.json"}


def export_overrides(fmt: str) -> Callable[[PipelineRun, Path, dict[str, Path]], list[str]]:
    def overrides(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> list[str]:
        args = [f"model={inputs['model']}", f"export={fmt}", f"output_dir={folder}", "export.deepstream=false"]
        if fmt == "onnx" and ctx.cfg.pipeline.get("deploy_size"):
            args.append(f"export.input_size=[{','.join(str(v) for v in ctx.cfg.pipeline.deploy_size)}]")
        return [*args, *list(ctx.cfg.pipeline.export_args)]
    return overrides


def export_stage(fmt: str, output: str) -> tuple[Callable, Callable]:
    make_args = export_overrides(fmt)

    def config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
        return ctx.stage_config("export", folder, make_args(ctx, folder, inputs))

    def run(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: DictConfig) -> dict[str, Path]:
        from gridface.contract import metadata_path
        from gridface.stages.export import run as export_run

        result = export_run(cfg)
        model = Path(result[output])
        return {"model": model, "metadata": metadata_path(model)}
    return config, run


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here (no TensorRT, cuda-python or GPU), or None."""
    from gridface.inference.tensorrt_backend import require_tensorrt

    try:
        require_tensorrt()
    except RuntimeError as e:
        return str(e)
    return None


def evaluate_stage(artifact: str) -> tuple[Callable, Callable]:
    def overrides(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> list[str]:
        return [f"model={inputs['model']}", f"split={ctx.cfg.pipeline.split}", "num_workers=0",
                f"device={ctx.cfg.pipeline.device}", *list(ctx.cfg.pipeline.evaluate_args)]

    def config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
        return ctx.stage_config("evaluate", folder, overrides(ctx, folder, inputs))

    def run(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: DictConfig) -> dict[str, Path]:
        from gridface.stages.evaluate import run as evaluate_run

        evaluate_run(cfg)
        return {"metrics": folder / "metrics.json"}
    return config, run


def infer_overrides(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> list[str]:
    return [f"model={inputs['model']}", f"output_dir={folder}", f"max_frames={ctx.cfg.pipeline.samples}",
            "batch_size=1", f"device={ctx.cfg.pipeline.device}", *list(ctx.cfg.pipeline.infer_args)]


def infer_config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
    return ctx.stage_config("infer", folder, infer_overrides(ctx, folder, inputs))


def run_infer(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: DictConfig) -> dict[str, Path]:
    from gridface.stages.infer import run

    run(cfg)
    return {"summary": folder / "summary.json"}


def benchmark_config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> DictConfig:
    return ctx.cfg.pipeline.benchmark


def run_benchmark(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], bench: DictConfig) -> dict[str, Path]:
    from gridface.utils.io import write_json
    from gridface.workflow.benchmark import benchmark_artifacts

    record = benchmark_artifacts(inputs, list(bench.batches), bench.reps, bench.warmup, bench.get("threads"))
    write_json(folder / "benchmark.json", record)
    return {"benchmark": folder / "benchmark.json"}


def report_config(ctx: PipelineRun, folder: Path, inputs: dict[str, Path]) -> Any:
    return {"samples": ctx.cfg.pipeline.samples, "network": ctx.cfg.network.get("backbone")}


def run_report(ctx: PipelineRun, folder: Path, inputs: dict[str, Path], cfg: dict[str, Any]) -> dict[str, Path]:
    from gridface.workflow.report import write_pipeline_report

    return write_pipeline_report(folder, ctx.records, int(cfg["samples"]), cfg.get("network"), dict(ctx.outdated))


def given_model(cfg: DictConfig) -> dict[str, Path]:
    """The pipeline's ``model=``: the weights its first training starts from, as in gridface.train."""
    return {"model": Path(str(cfg.model)).expanduser().resolve()} if cfg.get("model") else {}


def build_stages() -> list[Stage]:
    stages = [
        # model=: the weights the first training starts from, as in gridface.train (an input told by its content)
        Stage("train", {}, run_training("train"), training_stage_config("train"), given_inputs=given_model),
        Stage("prune", {"model": ("train", "checkpoint")}, run_prune, prune_config),
        Stage("retrain", {"model": ("prune", "checkpoint")}, run_training("retrain"), training_stage_config("retrain")),
    ]
    for name, fmt, source, output in (("export_fp32", "onnx", ("retrain", "checkpoint"), "onnx"),
                                      ("export_int8", "onnx_int8", ("export_fp32", "model"), "onnx_int8"),
                                      ("export_int8_trt", "onnx_int8_trt", ("export_fp32", "model"), "onnx_int8"),
                                      ("engine_fp16", "tensorrt_fp16", ("export_fp32", "model"), "engine"),
                                      ("engine_int8", "tensorrt_int8", ("export_int8_trt", "model"), "engine")):
        config, run = export_stage(fmt, output)
        stages.append(Stage(name, {"model": source}, run, config,
                            unavailable=tensorrt_unavailable if fmt.startswith("tensorrt") else None))
    for artifact, (stage, output, _) in ARTIFACTS.items():
        config, run = evaluate_stage(artifact)
        stages.append(Stage(f"evaluate_{artifact}", {"model": (stage, output)}, run, config))
    stages.append(Stage("infer", {"model": ("export_int8", "model")}, run_infer, infer_config))
    stages.append(Stage("benchmark", {a: (s, o) for a, (s, o, _) in ARTIFACTS.items()}, run_benchmark,
                        benchmark_config, optional_inputs=True))
    report_inputs = {f"metrics_{a}": (f"evaluate_{a}", "metrics") for a in ARTIFACTS}
    report_inputs.update(benchmark=("benchmark", "benchmark"), samples=("infer", "summary"),
                         prune_report=("prune", "report"))
    stages.append(Stage("report", report_inputs, run_report, report_config, optional_inputs=True))
    return stages


STAGES = build_stages()
STAGE_NAMES = [s.name for s in STAGES]


def selected_stages(spec: Any) -> list[str]:
    if spec in (None, "all"):
        return STAGE_NAMES
    names = [str(s) for s in spec]
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"pipeline.stages: unknown {unknown}; the stages are {STAGE_NAMES}")
    return [n for n in STAGE_NAMES if n in names]


def run_stage_job(cfg: DictConfig, root: Path, name: str, inputs: dict[str, Path], stage_cfg: Any
                  ) -> dict[str, Path]:
    """One stage in a cluster job (:mod:`gridface.workflow.submit`): the same work, with the same config object
    (pickled), as in the pipeline's process. gridface.utils.hydra is imported above: the resolvers (${len:...})."""
    stage = next(s for s in STAGES if s.name == name)
    return stage.run(PipelineRun(cfg, root), root / name, inputs, stage_cfg)


def inputs_moved_on(record: StageRecord, stage: Stage, inputs: dict[str, Path], producers: dict[str, str],
                    outdated: dict[str, str]) -> str | None:
    """Why a stage left out of ``pipeline.stages`` no longer describes its inputs (another file, a rerun of the stage
    that made one into other bytes, or that stage itself out of date), or None. Hashes only an input whose producing
    run changed (a rerun that wrote the same bytes changed nothing)."""
    for name, rec in record.inputs.items():
        if name not in inputs or str(inputs[name]) != rec["path"]:
            return f"its input {name} is another file now"
        if producers.get(name) and rec.get("run_id") and producers[name] != rec["run_id"] and (
                not inputs[name].is_file() or file_sha256(inputs[name]) != rec["sha256"]):
            return f"its input {name} was rebuilt"
        source = stage.inputs[name][0] if name in stage.inputs else None
        if source in outdated:
            return f"{source} is out of date"
    return None


def set_aside(folder: Path) -> None:
    """Move a stage's earlier outputs aside instead of deleting them: a finished run to ``<stage>.previous``, an
    unfinished one (no manifest: it died or its settings were refused) to ``<stage>.unfinished``, each replacing an
    older one of its kind, so failed attempts never replace the last finished run."""
    if not folder.exists():
        return
    finished = read_manifest(folder) is not None
    aside = folder.with_name(folder.name + (".previous" if finished else ".unfinished"))
    shutil.rmtree(aside, ignore_errors=True)
    folder.rename(aside)
    print(f"pipeline: {folder.name}: its earlier {'' if finished else 'unfinished '}run is kept in {aside}",
          flush=True)


def run_pipeline(cfg: DictConfig, root: Path) -> dict[str, Any]:
    """Run (or skip) every selected stage in order; return what ran, what was skipped and the report's path."""
    ctx = PipelineRun(cfg, root)
    wanted = selected_stages(cfg.pipeline.get("stages"))
    if cfg.get("model") is not None:  # a missing or wrong model= is one line now, not after the work before it
        from gridface.stages.checks import check_model_file

        check_model_file("train", str(cfg.model))
    cluster = launcher_cluster()
    if cluster is None and {"train", "retrain"} & set(wanted):  # a GPU recipe here: one line now, not at train
        check_gpu_available(OmegaConf.select(cfg, "trainer.accelerator"))
    for stage in STAGES:
        folder = root / stage.name
        record = read_manifest(folder)
        inputs, producers, missing = {}, {}, []
        for name, (src, output) in stage.inputs.items():
            upstream = ctx.records.get(src) or read_manifest(root / src)
            if upstream is not None and output in upstream.outputs:
                inputs[name] = Path(upstream.outputs[output]["path"])
                producers[name] = upstream.run_id
            else:
                missing.append(f"{src}.{output}")
        if stage.given_inputs is not None:
            inputs.update(stage.given_inputs(cfg))
        if stage.name not in wanted:
            if record is not None:
                ctx.records[stage.name] = record
                why = inputs_moved_on(record, stage, inputs, producers, ctx.outdated)
                if why:
                    ctx.outdated[stage.name] = why
            continue
        if missing and not stage.optional_inputs:
            upstream_skipped = [m for m in missing if (r := ctx.records.get(m.split(".")[0])) is not None
                                and r.status == "skipped"]
            if upstream_skipped and len(upstream_skipped) == len(missing):
                reason = f"{', '.join(missing)} was skipped"
                if record is None or record.status != "skipped" or record.reason != reason:
                    record = write_manifest(folder, stage.name, "skipped", {}, {}, None, 0.0, reason)
                    ctx.skipped.append(stage.name)
                    print(f"pipeline: {stage.name} skipped: {reason}", flush=True)
                ctx.records[stage.name] = record
                continue
            raise ValueError(f"pipeline stage {stage.name} needs {missing}, which no run wrote under {root}: "
                             f"include the stages that make them in pipeline.stages")
        stage_cfg = stage.config(ctx, folder, inputs)  # once: the manifest records the config the stage runs with
        config = resolved(stage_cfg)
        reason = stage.unavailable() if stage.unavailable else None
        if reason:  # recorded once; a rerun on the same machine says nothing, one where it can run runs it
            if record is None or record.status != "skipped" or record.reason != reason:
                record = write_manifest(folder, stage.name, "skipped", inputs, {}, config, 0.0, reason, producers)
                ctx.skipped.append(stage.name)
                print(f"pipeline: {stage.name} skipped: {reason}", flush=True)
            ctx.records[stage.name] = record
            continue
        stale = why_stale(record, inputs, config, producers)
        if stale is None:
            ctx.records[stage.name] = record
            log.debug("pipeline: %s is up to date", stage.name)
            continue
        print(f"pipeline: {stage.name} ({stale})", flush=True)
        if record is not None:
            set_aside(folder)  # a finished run being redone starts clean
        elif folder.exists():  # a run that died: resumed only under the settings and inputs it started with
            unresumable = why_not_resumable(folder, inputs, config, producers)
            if unresumable:
                print(f"pipeline: {stage.name}: its unfinished run is not resumed: {unresumable}", flush=True)
                set_aside(folder)
            else:
                print(f"pipeline: {stage.name}: resuming its unfinished run", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_start(folder, stage.name, inputs, config, producers)
        start = time.perf_counter()
        if cluster is not None and stage.name != "report":
            outputs = submit_stage(*cluster, folder, stage.name, run_stage_job, cfg, root, stage.name, inputs,
                                   stage_cfg)
        else:
            outputs = stage.run(ctx, folder, inputs, stage_cfg)
        ctx.records[stage.name] = write_manifest(folder, stage.name, "done", inputs, outputs, config,
                                                 time.perf_counter() - start, producers=producers)
        ctx.ran.append(stage.name)
    report = ctx.records.get("report")
    report_path = Path(report.outputs["report_md"]["path"]) if report and "report_md" in report.outputs else None
    return {"ran": ctx.ran, "skipped": ctx.skipped, "outdated": ctx.outdated,
            "report": str(report_path) if report_path else None, "run_dir": str(root)}
