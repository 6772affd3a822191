"""gridface.pipeline: stage records that make reruns skip finished work, and the whole TAO workflow on a tiny budget
(the smoke preset) as a user runs it: one command, a report row per artifact, a rerun that does nothing, and a
deleted INT8 model that rebuilds only itself and what reads it."""

import json

import pytest

from gridface.workflow.manifest import read_manifest, why_stale, write_manifest
from gridface.workflow.runner import STAGE_NAMES, selected_stages, tensorrt_unavailable

from .helpers import run_smoke_pipeline


def test_stage_record_stands_until_an_output_input_or_setting_changes(tmp_path):
    src, out = tmp_path / "model.onnx", tmp_path / "stage" / "model_int8.onnx"
    src.write_bytes(b"fp32")
    out.parent.mkdir()
    out.write_bytes(b"int8")
    up = write_manifest(tmp_path / "up", "export_fp32", "done", {}, {"model": src}, {"opset": 17}, 1.0)
    rec = write_manifest(out.parent, "export_int8", "done", {"model": src}, {"model": out}, {"images": 16}, 2.0,
                         producers={"model": up.run_id})
    rec = read_manifest(out.parent)  # what a later process sees
    assert why_stale(rec, {"model": src}, {"images": 16}, {"model": up.run_id}) is None
    assert why_stale(None, {"model": src}, {"images": 16}) == "not run yet"
    assert why_stale(rec, {"model": src}, {"images": 32}) == "its configuration changed"
    assert why_stale(rec, {"model": tmp_path / "other.onnx"}, {"images": 16}) == "its inputs changed"
    # the same bytes written by a new run of the stage before it: nothing changed, its readers stand (a prune rerun
    # after its report was deleted retrained and redid every later stage)
    assert why_stale(rec, {"model": src}, {"images": 16}, {"model": "another-run"}) is None
    src.write_bytes(b"fp32, retrained")
    assert "input model" in why_stale(rec, {"model": src}, {"images": 16}) and "changed" in why_stale(
        rec, {"model": src}, {"images": 16})
    src.write_bytes(b"fp32")
    out.unlink()
    assert "is missing" in why_stale(rec, {"model": src}, {"images": 16})
    skipped = write_manifest(tmp_path / "engine", "engine_fp16", "skipped", {}, {}, {}, 0.0, "no TensorRT")
    assert "skipped before (no TensorRT)" in why_stale(skipped, {}, {})


def test_a_speed_setting_changed_between_runs_redoes_no_stage(tmp_path):
    """dataset.num_workers=1 on a rerun of a finished pipeline retrained from scratch and redid all 15 stages:
    the whole training config was hashed, loader workers and threads included. A manifest written before (its hash
    over every key) still stands."""
    import json

    from gridface.workflow.manifest import MANIFEST, config_sha256

    config = {"dataset": {"num_workers": 2, "batch_size": 8}, "datamodule": {"num_workers": 2, "prefetch": "stream"},
              "optimizer": {"max_lr": 1e-3}, "threads": 2}
    rec = write_manifest(tmp_path, "train", "done", {}, {}, config, 1.0)
    faster = {"dataset": {"num_workers": 8, "batch_size": 8}, "datamodule": {"num_workers": 8, "prefetch": "thread"},
              "optimizer": {"max_lr": 1e-3}, "threads": 16}
    assert why_stale(rec, {}, faster) is None
    assert why_stale(rec, {}, {**faster, "optimizer": {"max_lr": 3e-4}}) == "its configuration changed"
    assert why_stale(rec, {}, {**faster, "dataset": {"num_workers": 8, "batch_size": 4}}) == "its configuration changed"
    older = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**older, "config_sha256": config_sha256(config, speed_settings=True)}))
    assert why_stale(read_manifest(tmp_path), {}, config) is None


def test_unreadable_record_means_the_stage_runs_again(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) is None


def test_stage_subsets_keep_the_pipeline_order_and_unknown_names_are_errors():
    assert selected_stages("all") == STAGE_NAMES
    assert selected_stages(["retrain", "train", "prune"]) == ["train", "prune", "retrain"]
    with pytest.raises(ValueError, match=r"pipeline.stages: unknown \['trian'\]"):
        selected_stages(["trian"])


def ran(stdout: str) -> list[str]:
    """The stages a pipeline run says it ran (its closing line)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("pipeline /")), None)
    return line.split(": ran ", 1)[1].split(", ") if line else []


@pytest.mark.slow
def test_smoke_pipeline_reports_every_artifact_reruns_nothing_and_rebuilds_only_what_reads_a_deleted_model(
        smoke_pipeline):
    root, stdout, seconds = smoke_pipeline
    run_dir = root / "outputs" / "pipeline" / "smoke"
    print(f"smoke pipeline: {seconds:.1f} s")
    assert ran(stdout)[:3] == ["train", "prune", "retrain"]
    report = run_dir / "report" / "report.md"
    assert f"report: {report}" in stdout
    rows = {r["artifact"]: r for r in json.loads((run_dir / "report" / "rows.json").read_text())}
    assert list(rows) == ["checkpoint", "pruned", "retrained", "onnx_fp32", "onnx_int8", "onnx_int8_trt",
                          "engine_fp16", "engine_int8"]
    for name in ("checkpoint", "pruned", "retrained", "onnx_fp32", "onnx_int8", "onnx_int8_trt"):
        row = rows[name]
        assert row["status"] == "done" and row["AP50"] is not None and row["mAP"] is not None, row
        assert row["latency_ms"] > 0 and row["images_per_s"] > 0 and row["params"] > 0 and row["macs"] > 0, row
    assert rows["pruned"]["params"] < 0.5 * rows["checkpoint"]["params"]  # pipeline.prune.ratio 0.7
    assert rows["retrained"]["params"] == rows["onnx_int8"]["params"] == rows["pruned"]["params"]
    assert rows["onnx_int8"]["file_mb"] < rows["onnx_fp32"]["file_mb"]
    # both INT8 models, each for its runtime: ONNX Runtime's uint8 one and TensorRT's symmetric one (checked)
    assert (run_dir / "export_int8" / "best_int8.onnx").is_file()
    assert (run_dir / "export_int8_trt" / "best_int8_trt.onnx").is_file()
    assert rows["onnx_int8_trt"]["file_mb"] < rows["onnx_fp32"]["file_mb"]
    # the FP32 ONNX model is its checkpoint: the same AP
    assert rows["onnx_fp32"]["AP50"] == pytest.approx(rows["retrained"]["AP50"], abs=1e-6)
    trt = tensorrt_unavailable() is None
    for engine in ("engine_fp16", "engine_int8"):
        assert rows[engine]["status"] == ("done" if trt else "skipped")
        if not trt:
            assert "tensorrt is not installed" in rows[engine]["reason"]
    text = report.read_text()
    assert "| onnx_int8 | ONNX Runtime INT8 |" in text
    assert "| onnx_int8_trt | ONNX Runtime INT8 (TensorRT's symmetric QDQ) |" in text
    assert "Network: `network=resnet18`" in text  # the backbone it trained (the default network)
    assert trt or "| engine_int8 | TensorRT INT8 | skipped: tensorrt is not installed |" in text
    for picture in ("accuracy_latency.png", "samples.png"):
        assert (run_dir / "report" / picture).stat().st_size > 10_000
    page = (run_dir / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<td>onnx_int8</td>" in page  # self-contained

    stdout, _ = run_smoke_pipeline(root)
    assert stdout.strip().splitlines() == [
        f"report: {report} (nothing to do: every stage of {run_dir} is up to date)"]

    int8 = run_dir / "export_int8" / "best_int8.onnx"
    before = int8.read_bytes()
    int8.unlink()
    stdout, _ = run_smoke_pipeline(root)
    # rebuilt: its readers run again only if the new model differs (a stage's inputs are told by their content)
    readers = [] if int8.read_bytes() == before else ["evaluate_onnx_int8", "infer", "benchmark", "report"]
    assert ran(stdout) == ["export_int8", *readers]
    assert (run_dir / "export_int8" / "best_int8.onnx").is_file()
    assert (run_dir / "export_int8.previous" / "manifest.json").is_file()  # the earlier run is set aside

    stdout, _ = run_smoke_pipeline(root, "pipeline.stages=[report]", "pipeline.samples=2")
    assert ran(stdout) == ["report"]


def test_a_stage_that_died_resumes_only_under_the_settings_it_started_with(tmp_path, monkeypatch):
    """A crashed stage leaves no manifest: its folder resumes when rerun with the same settings, and is set aside
    (not resumed into a run under new settings, whose manifest would then record the new ones) when they changed."""
    from omegaconf import OmegaConf

    from gridface.workflow import runner

    seen = []

    def train(ctx, folder, inputs, cfg):  # like training: resumes from the checkpoint its folder holds
        ckpt = folder / "last.ckpt"
        seen.append(ckpt.read_text() if ckpt.is_file() else None)
        ckpt.write_text(json.dumps(OmegaConf.to_container(ctx.cfg.pipeline.train)))
        if ctx.cfg.pipeline.die:
            raise RuntimeError("killed")
        return {"checkpoint": ckpt}

    monkeypatch.setattr(runner, "STAGES", [runner.Stage("train", {}, train, lambda ctx, folder, inputs:
                                                        runner.resolved(ctx.cfg.pipeline.train))])

    def run(lr: float, die: bool) -> None:
        cfg = OmegaConf.create({"pipeline": {"stages": ["train"], "train": {"optimizer.max_lr": lr}, "die": die}})
        if die:
            with pytest.raises(RuntimeError, match="killed"):
                runner.run_pipeline(cfg, tmp_path)
        else:
            runner.run_pipeline(cfg, tmp_path)

    run(1e-4, die=False)
    run(1e-3, die=True)  # changed settings: the finished run is set aside (as before)
    run(1e-3, die=True)  # the same settings: resumed
    assert seen == [None, None, '{"optimizer.max_lr": 0.001}']
    run(1e-2, die=True)  # other settings again: the crashed run goes aside, the finished one stays aside
    assert (tmp_path / "train.unfinished" / "last.ckpt").read_text() == '{"optimizer.max_lr": 0.001}'
    assert read_manifest(tmp_path / "train.previous").config == {"optimizer.max_lr": 1e-4}
    run(1e-4, die=False)  # changed settings: a fresh folder, the crashed run kept aside
    assert seen[3:] == [None, None], f"resumed the checkpoint of other settings: {seen[3:]}"
    assert (tmp_path / "train.unfinished" / "last.ckpt").read_text() == '{"optimizer.max_lr": 0.01}'
    assert read_manifest(tmp_path / "train.previous").config == {"optimizer.max_lr": 1e-4}
    record = read_manifest(tmp_path / "train")
    assert record.config == {"optimizer.max_lr": 1e-4} and why_stale(record, {}, {"optimizer.max_lr": 1e-4}) is None
    # a folder that does not say what it was started with (an older gridface, a copy) is not resumed either
    (tmp_path / "train" / "manifest.json").unlink()
    (tmp_path / "train" / "started.json").unlink()
    run(1e-4, die=False)
    assert seen[5] is None and (tmp_path / "train.unfinished" / "last.ckpt").is_file()


def test_stages_left_out_of_a_subset_run_are_reported_out_of_date(tmp_path, monkeypatch):
    """pipeline.stages=[train] after a change reruns train only: prune (which read train's checkpoint) and what reads
    prune are kept as they were, and the run says they are out of date instead of 'every stage is up to date'."""
    from omegaconf import OmegaConf

    from gridface.workflow import runner

    def make(name):
        def run(ctx, folder, inputs, cfg):
            out = folder / f"{name}.ckpt"
            out.write_text(json.dumps([cfg, *(p.read_text() for p in inputs.values())]))
            return {"checkpoint": out}
        return run

    def config(ctx, folder, inputs):
        return runner.resolved(ctx.cfg.pipeline.lr)

    monkeypatch.setattr(runner, "STAGES", [
        runner.Stage("train", {}, make("train"), config),
        runner.Stage("prune", {"model": ("train", "checkpoint")}, make("prune"), config),
        runner.Stage("retrain", {"model": ("prune", "checkpoint")}, make("retrain"), config)])

    def run(lr, stages):
        cfg = OmegaConf.create({"pipeline": {"stages": stages, "lr": lr}})
        return runner.run_pipeline(cfg, tmp_path)

    assert run(1, ["train", "prune", "retrain"])["ran"] == ["train", "prune", "retrain"]
    assert run(1, ["train"])["outdated"] == {}  # nothing changed
    result = run(2, ["train"])
    assert result["ran"] == ["train"]
    assert result["outdated"] == {"prune": "its input model was rebuilt", "retrain": "prune is out of date"}
    assert run(2, ["train", "prune", "retrain"])["ran"] == ["prune", "retrain"]  # a full run brings them up to date
    assert run(2, ["train"])["outdated"] == {}


def test_a_report_made_beside_out_of_date_stages_says_so_first(tmp_path):
    """pipeline.stages=[prune,report] after a new prune ratio: the report kept the earlier retrained and exported
    rows and only the console said they were out of date; report.md and report.html now say it first."""
    from gridface.workflow.report import write_pipeline_report

    outdated = {"retrain": "its input model was rebuilt", "export_fp32": "retrain is out of date"}
    outputs = write_pipeline_report(tmp_path, {}, 0, "resnet18", outdated)
    for name in ("report_md", "report_html"):
        text = outputs[name].read_text()
        assert ("Out of date (left out of pipeline.stages; their rows describe earlier outputs): retrain (its input "
                "model was rebuilt); export_fp32 (retrain is out of date)") in text
    assert "Out of date" not in write_pipeline_report(tmp_path / "fresh", {}, 0, "resnet18")["report_md"].read_text()


def test_the_pipeline_trains_from_the_model_it_is_given(tmp_path, monkeypatch):
    """model= on the pipeline is the weights its train stage starts from, as with gridface.train (its --help says
    so): it was dropped, and the stage trained from scratch. The file is an input of the stage, told by its content;
    a model= that does not exist is one line before any work."""
    import dataclasses

    from gridface.utils.hydra import stage_config
    from gridface.utils.validate import ConfigError
    from gridface.workflow import runner

    start = tmp_path / "start.ckpt"
    start.write_bytes(b"weights 1")
    seen = []

    def train(ctx, folder, inputs, cfg):
        seen.append((cfg.model, cfg.network.init_from))
        (folder / "best.ckpt").write_text("trained")
        return {"checkpoint": folder / "best.ckpt"}

    real = next(s for s in runner.STAGES if s.name == "train")
    monkeypatch.setattr(runner, "STAGES", [dataclasses.replace(real, run=train)])

    def run(model):
        cfg = stage_config("pipeline", ["experiment=pipeline_smoke", f"model={model}", "pipeline.stages=[train]"],
                           output_dir=str(tmp_path / "run"))
        return runner.run_pipeline(cfg, tmp_path / "run")["ran"]

    assert run(start) == ["train"] and seen == [(str(start), str(start))]
    assert read_manifest(tmp_path / "run" / "train").inputs["model"]["path"] == str(start)
    assert run(start) == []  # the same bytes: nothing to do
    start.write_bytes(b"weights 2")
    assert run(start) == ["train"]
    with pytest.raises(ConfigError, match="no such file"):
        run(tmp_path / "gone.ckpt")
