"""One function builds a stage's config (gridface.utils.hydra.stage_config): it composes what the stage's command
line composes, works whether or not Hydra is initialised, and the pipeline, the export callback and tuning build
their configs through it: the pipeline once per stage, the callback and the trials from overrides."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from gridface.utils.hydra import config_dir, override, stage_config

from .helpers import TINY, compose_config, compose_train

ROOT = Path(__file__).resolve().parents[1]


def command_line_config(module: str, args: list[str], cwd: Path) -> str:
    """The job config ``python -m <module> <args>`` composes, as the YAML ``--cfg job`` prints."""
    env = {**os.environ, "GRIDFACE_ROOT": str(cwd), "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", module, *args, "--cfg", "job"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(("stage", "module", "args"), [
    ("export", "gridface.export", ["model=x.ckpt", "export=onnx_int8", "export.calibration.images=16",
                                   "output_dir=out/e"]),
    ("pipeline", "gridface.pipeline", ["experiment=pipeline_smoke", "prune@pipeline.prune=threshold",
                                       "pipeline.prune.threshold=0.2", "pipeline.retrain={trainer.max_epochs:2}"]),
])
def test_stage_config_is_what_the_command_line_composes(tmp_path, monkeypatch, stage, module, args):
    monkeypatch.setenv("GRIDFACE_ROOT", str(tmp_path))
    assert OmegaConf.to_yaml(stage_config(stage, args)) == command_line_config(module, args, tmp_path)


def test_stage_config_works_with_and_without_hydra_and_leaves_hydra_as_it_was(tmp_path):
    assert not GlobalHydra.instance().is_initialized()
    plain = stage_config("export", ["model=a.ckpt"], output_dir=tmp_path)
    assert not GlobalHydra.instance().is_initialized()
    assert plain.task_name == "export" and plain.paths.output_dir == str(tmp_path) and plain.model == "a.ckpt"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):  # as inside our @hydra.main
        assert stage_config("export", ["model=a.ckpt"], output_dir=tmp_path) == plain
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path / "other"), version_base="1.3"):  # another app's Hydra
        assert stage_config("export", ["model=a.ckpt"], output_dir=tmp_path) == plain
        assert compose("app").x == 1  # still the caller's
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.parametrize("value", ["a'b", "C:\\", "x\\y", "a\\'b", "", "16-mixed", "null", "1e-3", 2.5e-7, 3, True,
                                   None, [1, "x", [2.0]], {"backbone.layer4.0.conv1": 0.7, "a": {"b": "c"}}])
def test_override_values_parse_back_unchanged(value):
    assert OverridesParser.create().parse_override(override("k", value)).value() == value


def test_override_path_sets_adds_and_deletes_keys_but_refuses_a_group_choice(tmp_path):
    base = stage_config("pipeline", ["experiment=pipeline_smoke"])
    cfg = stage_config("train", ["~pipeline", "loss.l1_regularization=0.5", "++new.key=1"], base=base,
                       output_dir=tmp_path)
    assert "pipeline" not in cfg and cfg.loss.l1_regularization == 0.5 and cfg.new.key == 1
    assert "pipeline" in base and base.loss.l1_regularization != 0.5  # a copy
    with pytest.raises(Exception, match="Could not override 'no_such_key'"):
        stage_config("train", ["no_such_key=1"], base=base)
    with pytest.raises(Exception, match="a config group cannot be chosen"):
        stage_config("train", ["optimizer=tao"], base=base)


# ---- the pipeline ------------------------------------------------------------------------------------------------

def test_pipeline_training_config_is_the_train_command_with_the_stage_changes(tmp_path):
    from gridface.workflow.runner import PipelineRun

    cfg = stage_config("pipeline", ["experiment=pipeline_smoke"], output_dir=tmp_path)
    ctx = PipelineRun(cfg, tmp_path)
    got = ctx.training_config(tmp_path / "retrain", tmp_path / "p.ckpt",
                              OmegaConf.to_container(cfg.pipeline.retrain))
    want = stage_config("train", ["experiment=pipeline_smoke", f"model={tmp_path / 'p.ckpt'}", "print_config=false",
                                  "loss.l1_regularization=0.0", "trainer.max_epochs=1"],
                        output_dir=tmp_path / "retrain")
    got, want = OmegaConf.to_container(got, resolve=True), OmegaConf.to_container(want, resolve=True)
    want.pop("pipeline")  # the experiment file's pipeline: keys
    assert got.pop("task_name") == "pipeline" and want.pop("task_name") == "train"
    assert got == want


def test_pipeline_builds_each_stage_config_once_and_runs_the_object_it_records(tmp_path, monkeypatch):
    """Every stage of the real graph with its real config, the stages' work replaced by fakes that write their
    outputs: one composition per composed stage, and each stage runs with the very object its manifest records."""
    import hydra

    import gridface.stages.evaluate
    import gridface.stages.export
    import gridface.stages.infer
    import gridface.stages.prune
    import gridface.stages.train
    import gridface.workflow.benchmark
    import gridface.workflow.report
    from gridface.contract import metadata_path
    from gridface.utils.io import write_json
    from gridface.workflow import runner
    from gridface.workflow.manifest import read_manifest

    composed: list[str] = []
    real_compose = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda name, *a, **k: composed.append(name) or real_compose(name, *a, **k))
    received: dict[str, object] = {}

    def fake(stage_module, make_outputs):
        def run(cfg, *args, **kwargs):
            folder = Path(cfg.paths.output_dir)
            received[folder.name] = cfg
            return make_outputs(cfg, folder)
        monkeypatch.setattr(stage_module, "run", run)

    def touch(path: Path, text: str = "x") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def export(cfg, folder):
        model = touch(folder / ("best_int8.onnx" if cfg.export.format == "onnx_int8" else "best.onnx"))
        write_json(metadata_path(model), {})
        return {"onnx": str(model), "onnx_int8": str(model)}

    fake(gridface.stages.train, lambda cfg, folder: {"best_checkpoint": str(touch(folder / "best.ckpt"))})
    fake(gridface.stages.prune, lambda cfg, folder: {"pruned_checkpoint": str(touch(folder / "pruned.ckpt")),
                                                     "_": touch(folder / "prune_report.json")})
    fake(gridface.stages.export, export)
    fake(gridface.stages.evaluate, lambda cfg, folder: touch(folder / "metrics.json"))
    fake(gridface.stages.infer, lambda cfg, folder: touch(folder / "summary.json"))
    monkeypatch.setattr(gridface.workflow.benchmark, "benchmark_artifacts", lambda *a: {})
    monkeypatch.setattr(gridface.workflow.report, "write_pipeline_report",
                        lambda folder, records, samples, network=None, outdated=None: {
                            "report_md": touch(folder / "report.md")})
    monkeypatch.setattr(runner, "tensorrt_unavailable", lambda: "no TensorRT in this test")
    built: dict[str, object] = {}

    def recorded(stage):
        def config(ctx, folder, inputs):
            built[stage.name] = stage.config(ctx, folder, inputs)
            return built[stage.name]
        return runner.Stage(stage.name, stage.inputs, stage.run, config, stage.optional_inputs, stage.unavailable)

    monkeypatch.setattr(runner, "STAGES", [recorded(s) for s in runner.STAGES])
    cfg = stage_config("pipeline", ["experiment=pipeline_smoke"], output_dir=tmp_path, cache_dir=tmp_path / "cache",
                       log_dir=tmp_path)
    composed.clear()
    result = runner.run_pipeline(cfg, tmp_path)

    assert result["ran"][:5] == ["train", "prune", "retrain", "export_fp32", "export_int8"]
    # prune; export fp32, int8 (ORT), int8 (TensorRT) and the two engines (recorded as skipped); 6 evaluations;
    # infer: once each
    assert sorted(composed) == sorted(["prune", *["export"] * 5, *["evaluate"] * 6, "infer"])
    for name, cfg_run in received.items():
        assert cfg_run is built[name], f"{name} ran with another config than the one it recorded"
        assert read_manifest(tmp_path / name).config == runner.resolved(built[name])
    assert set(received) >= {"train", "prune", "retrain", "export_fp32", "export_int8", "export_int8_trt", "infer",
                             *(f"evaluate_{a}" for a in ("checkpoint", "pruned", "retrained", "onnx_fp32",
                                                         "onnx_int8", "onnx_int8_trt"))}


# ---- the export callback and tuning ------------------------------------------------------------------------------

def test_export_callback_exports_with_the_config_the_export_command_composes(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from gridface.stages import export_callback

    train = compose_train(tmp_path, [*TINY, "callbacks/export=onnx_int8",
                                     "callbacks.export.export.calibration.images=16"])
    callback = instantiate(train.callbacks.export)
    ckpt = tmp_path / "out" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("x")
    seen = []
    monkeypatch.setattr(export_callback, "export_run", lambda cfg: seen.append(cfg) or {})
    trainer = SimpleNamespace(is_global_zero=True, checkpoint_callback=SimpleNamespace(best_model_path=str(ckpt)))
    callback.on_fit_end(trainer, None)

    (got,) = seen
    out = tmp_path / "out" / "export"
    # what python -m gridface.export composes for the same model, folder, format and data
    want = compose_config("export", out, tmp_path / "cache", [
        f"model={ckpt}", f"output_dir={out}", "export=onnx_int8", "export.calibration.images=16", "dataset=synthetic",
        *[a for a in TINY if a.startswith("dataset.")]])
    assert set(got) >= set(want) - {"recipe", "augment", "loss", "postprocess", "optimizer", "trainer"}
    for key in ("task_name", "model", "output_dir", "export", "dataset", "paths.output_dir"):
        a = OmegaConf.select(got, key)
        b = OmegaConf.select(want, key)
        assert (OmegaConf.to_container(a, resolve=True) if OmegaConf.is_config(a) else a) == \
            (OmegaConf.to_container(b, resolve=True) if OmegaConf.is_config(b) else b), key


def test_tuning_trial_is_the_study_config_with_its_values_as_overrides(tmp_path):
    from gridface.tune import trial_config

    study = compose_config("tune", tmp_path / "w", tmp_path / "cache", ["tune.n_trials=1"])
    values = {"optimizer.max_lr": 1.2345e-3, "loss.bbox_weight": 7.0, "trainer.precision": "16-mixed"}
    trial = trial_config(study, values, tmp_path / "trial_0000")
    want = stage_config("tune", ["optimizer.max_lr=1.2345e-3", "loss.bbox_weight=7.0", "trainer.precision='16-mixed'",
                                 "ckpt_path=null", "~tune"], output_dir=tmp_path / "trial_0000",
                        cache_dir=tmp_path / "cache")
    assert OmegaConf.to_container(trial, resolve=True) == OmegaConf.to_container(want, resolve=True)
    assert "tune" in study and study.ckpt_path == "auto"  # the study's own config is left alone
    with pytest.raises(ValueError, match="'optimizer.nope' is not a key of the training config"):
        trial_config(study, {"optimizer.nope": 1.0}, tmp_path)
