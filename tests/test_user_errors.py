"""Every user mistake is one line, from every stage: ``gridface.<stage>: error: <what is wrong, naming the key or the
file>`` plus the hint about HYDRA_FULL_ERROR, exit status 2. One test per class of mistake (missing and unwritable
paths, wrong model files, missing optional packages, the GPU recipe without a GPU), each stage's ``run(cfg)`` called
in-process through the same :func:`~gridface.utils.errors.user_errors` wrapper its entry point uses (cheap), and one
subprocess for the run folder Hydra creates before any stage code runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gridface.utils.errors import RunDirCheck, user_errors
from gridface.utils.hydra import stage_config

ROOT = Path(__file__).resolve().parents[1]
HINT = "(HYDRA_FULL_ERROR=1 shows the traceback)"


def stage_run(stage: str):
    """The work of ``python -m gridface.<stage>``."""
    import importlib

    module = {"export": "gridface.stages.export", "train": "gridface.stages.train", "prune": "gridface.stages.prune",
              "evaluate": "gridface.stages.evaluate", "infer": "gridface.stages.infer",
              "check_data": "gridface.check_data", "tune": "gridface.tune"}[stage]
    return importlib.import_module(module).run


def one_line(capsys, stage: str, overrides: list[str], tmp_path: Path, monkeypatch=None) -> str:
    """Run ``stage`` with ``overrides`` as its entry point does; the one error line it prints."""
    cfg = stage_config(stage, [*overrides], output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        user_errors(stage)(stage_run(stage))(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1] == HINT, err
    assert err[0].startswith(f"gridface.{stage}: error: ")
    return err[0]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Wrong files a user gives as model=: a text file, an ONNX model, a folder (suffix checks read no content)."""
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "m.ckpt").write_bytes(b"ckpt")
    (tmp_path / "run").mkdir()
    return {"txt": tmp_path / "notes.txt", "onnx": tmp_path / "m.onnx", "ckpt": tmp_path / "m.ckpt",
            "dir": tmp_path / "run"}


@pytest.mark.parametrize("stage", ["train", "prune", "export", "evaluate", "infer"])
def test_missing_model_file(capsys, tmp_path, stage):
    line = one_line(capsys, stage, [f"model={tmp_path}/nope.ckpt"], tmp_path)
    assert line.endswith(f"model = '{tmp_path}/nope.ckpt': no such file")


@pytest.mark.parametrize(("stage", "kind", "message"), [
    ("train", "txt", r"gridface.train reads a gridface checkpoint \(.ckpt\), not a '.txt' file"),
    ("prune", "onnx", r"gridface.prune reads a gridface checkpoint \(.ckpt\), not a '.onnx' file: an exported model "
                      r"cannot be trained or pruned"),
    ("export", "txt", r"gridface.export reads a gridface checkpoint \(.ckpt\) or an ONNX model"),
    ("infer", "txt", r"gridface.infer reads .* or a TensorRT engine \(.engine, .plan\), not a '.txt' file"),
    ("evaluate", "dir", r"is a folder: give the model file in it"),
])
def test_wrong_model_file(capsys, tmp_path, files, stage, kind, message):
    import re

    line = one_line(capsys, stage, [f"model={files[kind]}"], tmp_path)
    assert f"model = '{files[kind]}'" in line and re.search(message, line), line


@pytest.mark.parametrize(("stage", "kind", "message"), [
    ("infer", "ckpt", r"m.ckpt: not a PyTorch checkpoint \(4 bytes, not the zip archive torch.save writes\)"),
    ("train", "ckpt", r"m.ckpt: not a PyTorch checkpoint"),
    ("export", "ckpt", r"m.ckpt: not a PyTorch checkpoint"),
    ("infer", "onnx", r"m.onnx: not a readable ONNX model \(.*\); a damaged or partly copied file"),
    ("evaluate", "onnx", r"m.onnx: not a readable ONNX model"),
])
def test_a_damaged_model_file_is_one_line_naming_it(capsys, tmp_path, files, stage, kind, message):
    """A file of the right suffix that is not what it says (a text file named .ckpt, a cut ONNX with its metadata
    beside it): it used to be a protobuf traceback, or the advice to trust a checkpoint that held no objects."""
    import json
    import re

    (tmp_path / "m.onnx.json").write_text(json.dumps({"format": "onnx_fp32", "input_name": "input_1",
                                                      "output_names": ["output_cov/Sigmoid", "output_bbox/BiasAdd"],
                                                      "input_hw": [64, 64], "class_names": ["face"], "stride": 16}))
    line = one_line(capsys, stage, [f"model={files[kind]}", *(["export=onnx_int8"] if stage == "export" else [])],
                    tmp_path)
    assert re.search(message, line), line


@pytest.mark.parametrize(("stage", "overrides"), [
    ("train", ["dataset=widerface", "dataset.root=/no/such/widerface"]),
    ("check_data", ["dataset=widerface", "dataset.root=/no/such/widerface"]),
    ("prune", ["model={ckpt}", "dataset=kitti", "dataset.root=/no/such/widerface"]),
])
def test_missing_data_folder(capsys, tmp_path, files, stage, overrides):
    line = one_line(capsys, stage, [o.format(ckpt=files["ckpt"]) for o in overrides], tmp_path)
    assert line.endswith("dataset.root = '/no/such/widerface' does not exist")


@pytest.mark.parametrize(("stage", "overrides"), [
    ("infer", ["model={ckpt}", "output_dir={blocked}/out"]),
    ("export", ["model={ckpt}", "output_dir={blocked}/out"]),
    ("check_data", ["output_dir={blocked}/out"]),
])
def test_unwritable_output_dir(capsys, tmp_path, files, stage, overrides):
    line = one_line(capsys, stage, [o.format(ckpt=files["ckpt"], blocked=files["txt"]) for o in overrides], tmp_path)
    assert f"output_dir = '{files['txt']}/out': this folder cannot be written" in line


@pytest.mark.parametrize("stage", ["train", "infer", "pipeline", "tune"])
def test_unwritable_run_folder_is_one_line_before_hydra_creates_it(capsys, tmp_path, files, stage):
    from hydra import compose, initialize_config_dir

    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(stage, [f"hydra.run.dir={files['txt']}/run"], return_hydra_config=True)
    assert "run_dir_check" in cfg.hydra.callbacks  # every stage's hydra group installs the check
    with pytest.raises(SystemExit):
        RunDirCheck().on_run_start(cfg)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"gridface.{stage}: error: hydra.run.dir = '{files['txt']}/run': this run folder cannot be created "
                   f"('{files['txt']}' is a file, not a folder); give a writable folder with hydra.run.dir=<folder>",
                   HINT]


def test_unwritable_run_folder_from_the_command_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "gridface.infer", f"hydra.run.dir={blocker}/run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines()[-2].startswith("gridface.infer: error: hydra.run.dir")
    assert "Traceback" not in done.stderr


def test_missing_imagenet_weights_name_the_real_key(capsys, tmp_path):
    line = one_line(capsys, "train", [f"network.pretrained={tmp_path}/resnet18.pth", "logger=none"], tmp_path)
    assert f"network.pretrained = '{tmp_path}/resnet18.pth': ImageNet weights not found" in line
    assert "set network.pretrained=<path>" in line and "model.backbone" not in line


def test_loaded_imagenet_weights_are_logged(tmp_path, caplog):
    import torchvision

    from gridface.model.backbone import Backbone

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with caplog.at_level("INFO", logger="gridface.model.backbone"):
        Backbone("resnet18", pretrained=str(path))
    assert f"network.pretrained: loaded 120 ImageNet tensors from {path}" in caplog.text
    assert "left at their init: layer1.0.downsample" in caplog.text


def test_tensorrt_export_without_tensorrt_stops_before_the_onnx_export(capsys, tmp_path, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as where it is absent
    line = one_line(capsys, "export", [f"model={files['ckpt']}", "export=tensorrt_fp16"], tmp_path)
    assert "tensorrt is not installed" in line and "pip install tensorrt cuda-python" in line
    assert not list((tmp_path / "out").glob("*.onnx"))  # stopped at once: the checkpoint was not even read


def test_tune_without_optuna(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    line = one_line(capsys, "tune", [], tmp_path)
    assert line.endswith("gridface.tune needs the 'optuna' package, which is not installed here: "
                         'pip install -e ".[tune]"')


def test_pipeline_on_slurm_without_submitit(capsys, tmp_path, monkeypatch):
    from gridface.workflow.submit import stage_executor

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SystemExit):
        user_errors("pipeline")(stage_executor)("slurm", {}, tmp_path, "train")
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("gridface.pipeline: error: running pipeline stages as Slurm jobs (hydra/launcher=slurm) "
                           "needs the 'submitit' package") and 'pip install -e ".[slurm]"' in line



def test_pipeline_on_slurm_without_slurm(capsys, monkeypatch):
    """hydra/launcher=slurm on a machine without Slurm: one line before any stage, not submitit's traceback
    ('Could not detect "srun"') once the first stage is submitted."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from gridface.training import launch
    from gridface.workflow import submit

    launcher = OmegaConf.create({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.RUN, launcher=launcher)))
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        user_errors("pipeline")(submit.launcher_cluster)()
    assert e.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("gridface.pipeline: error: hydra/launcher=slurm: no Slurm on this machine (srun and sbatch "
                           "not on PATH)")
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert submit.launcher_cluster() == ("slurm", {})

@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the GPU recipe runs")
@pytest.mark.parametrize("stage", ["train", "tune", "pipeline"])
def test_gpu_recipe_without_a_gpu_says_to_add_trainer_cpu(capsys, tmp_path, stage):
    """The real-data recipe on a CPU machine: one line naming trainer=cpu, after the dataset's own checks (a
    missing dataset.root is reported first, not hidden behind the missing GPU)."""
    (tmp_path / "widerface").mkdir()
    overrides = ["dataset=widerface", f"dataset.root={tmp_path}/widerface", "logger=none"]
    if stage == "pipeline":
        from gridface.workflow.runner import run_pipeline

        cfg = stage_config("pipeline", overrides, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
        with pytest.raises(SystemExit):
            user_errors("pipeline")(run_pipeline)(cfg, tmp_path / "out")
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[0].startswith("gridface.pipeline: error: ")
        line = err[0]
    else:
        line = one_line(capsys, stage, overrides, tmp_path)
    if stage == "train":
        assert "dataset.root is not set" in one_line(capsys, stage, ["dataset=kitti"], tmp_path)  # not the GPU line
    assert "trainer.accelerator = gpu" in line and "add trainer=cpu" in line


def test_qat_without_a_trained_model_stops_naming_model(capsys, tmp_path):
    # it quantized and "fine-tuned" random weights, exit 0, AP50 0.0; checked before modelopt is needed
    line = one_line(capsys, "train", ["experiment=qat", "trainer=cpu"], tmp_path)
    assert "experiment=qat fine-tunes a trained model: give model=<trained .ckpt>" in line


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=-1", "trainer.max_epochs = -1: must be a whole number >= 1 (or give trainer.max_steps)"),
    ("trainer.max_epochs=0", "trainer.max_epochs = 0: must be a whole number >= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches = 0: must be a whole number >= 1"),
    ("seed=abc", "seed = 'abc': must be a whole number"),
    ("optimizer.max_lr=-1", "optimizer.max_lr = -1: must be a number > 0"),
    ("trainer.limit_train_batches=-2", "invalid value -2 for limit_train_batches"),  # Lightning's, as one line
])
def test_wrong_training_values_are_one_line_naming_the_key(capsys, tmp_path, override, message):
    assert message in one_line(capsys, "train", ["trainer=cpu", override], tmp_path)


def test_a_run_folder_where_nothing_can_be_created_is_one_line_also_for_root(tmp_path):
    # /proc passes access(W_OK) for root, yet refuses new folders: two chained tracebacks before
    from gridface.utils.errors import unwritable_folder

    assert unwritable_folder(tmp_path / "new" / "run") is None and not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []  # the trial folder is gone
    if Path("/proc").is_dir():  # Linux
        assert unwritable_folder("/proc/gridface-run").startswith("nothing can be created in '/proc'")


def test_check_data_settings_are_checked(capsys, tmp_path):
    assert "workers = 'abc': must be a whole number >= 1" in one_line(capsys, "check_data", ["workers=abc"],
                                                                       tmp_path)
    assert "log_first = -1" in one_line(capsys, "check_data", ["log_first=-1"], tmp_path)
    assert "fail_on_problems = 'maybe': must be true or false" in one_line(capsys, "check_data",
                                                                           ["fail_on_problems=maybe"], tmp_path)


def test_a_mistake_in_a_submitit_job_is_the_jobs_result_not_an_exit(capsys, monkeypatch):
    """In a Slurm job of the submitit launcher, the one-line exit wrote no result for submitit to read: on a cluster
    without accounting the sweep's command waited for ever. Raised, submitit pickles it as the job's error."""
    from gridface.utils.errors import SubmittedJobError

    def stage() -> None:
        raise FileNotFoundError("dataset.root = '/data/x' does not exist")

    monkeypatch.setenv("SUBMITIT_FOLDER", "/tmp/submitit-job")
    with pytest.raises(SubmittedJobError, match=r"^gridface.train: error: dataset.root = '/data/x' does not exist$"):
        user_errors("train")(stage)()
    assert capsys.readouterr().err.strip() == "gridface.train: error: dataset.root = '/data/x' does not exist"
    monkeypatch.delenv("SUBMITIT_FOLDER")
    with pytest.raises(SystemExit) as exit_:  # elsewhere: the one line and exit status 2, as before
        user_errors("train")(stage)()
    assert exit_.value.code == 2
