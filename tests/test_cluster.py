"""Cluster pieces that run without a cluster: resume-after-preemption through the real signal path, the
resume-path rule, the sbatch script and the Trainer a 2-node x 4-device job gets, and DDP that counts each
validation image once (2 CPU processes against 1)."""

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
from omegaconf import open_dict

from gridface.module import GridBoxModule
from gridface.train import run
from gridface.training.launch import check_ddp_launch, cluster_plugins
from gridface.training.preemption import PreemptionCheckpoint
from gridface.training.resume import resolve_ckpt_path
from gridface.utils.validate import ConfigError

from .helpers import TINY, compose_train


class SignalAtStep(pl.Callback):
    """Sends this process SIGUSR2 (what Slurm sends before a time limit, and scancel --signal) after step N."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


def submitit_stand_in(signum, frame):  # noqa: ANN001
    """What submitit's handler does on rank 0 once it has requeued the job: exit."""
    raise SystemExit(-1)


@pytest.mark.slow
def test_preempted_run_checkpoints_on_the_signal_and_resumes_to_the_same_step(tmp_path, monkeypatch):
    over = [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
            "checkpoint_every_n_steps=0", "logger=none"]
    plain = run(compose_train(tmp_path / "plain", over))
    assert plain["global_step"] == 12 and plain["resumed_from"] is None

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # inside Slurm job 4242 (SLURM_NTASKS unset: no SLURMEnvironment)
    cfg = compose_train(tmp_path / "preempted", over)
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        with pytest.raises(SystemExit):
            run(cfg, callbacks=[SignalAtStep(6)])  # mid-epoch 2 of 3
    finally:
        signal.signal(signal.SIGUSR2, previous)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    import torch

    saved = torch.load(ckpts / "preempted.ckpt", weights_only=False)
    assert saved["global_step"] == 7  # the first step boundary after the signal (at step 6): no step half-done
    assert saved["gridface_slurm_job_id"] == "4242"
    # requeued, same folder; its command names a checkpoint (ckpt_path=<...>/last.ckpt, the end of epoch 1, as a
    # job started from another run's would): it goes on from the newer one it wrote itself. (ckpt_path=auto, the
    # default, finds preempted.ckpt too: tests/test_resume.py.)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed = run(compose_train(tmp_path / "preempted", [*over, f"ckpt_path={ckpts / 'last.ckpt'}"]))
    assert resumed["resumed_from"] == str(ckpts / "preempted.ckpt")
    assert resumed["global_step"] == plain["global_step"]
    assert Path(resumed["best_checkpoint"]).is_file() and resumed["best_score"] is not None


class PublicTrainer:
    """Only what Lightning's Trainer offers publicly (no ``_checkpoint_connector``): what the preemption callback
    may rely on while ``pytorch-lightning>=2.4`` stays open-ended."""

    is_global_zero, global_step = True, 7

    def __init__(self, world_size: int = 1) -> None:
        self.world_size, self.saved, self.others_signalled = world_size, [], False
        # mid-epoch, no validation after this batch (its save waits for those: tests/test_resume.py)
        self.val_check_batch = float("inf")
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=False)))
        # DDP: the strategy's all-reduce of the ranks' flags (any rank signalled: every rank saves)
        self.strategy = type("Strategy", (), {"reduce_boolean_decision":
                                              lambda _, mine, all=True: mine or self.others_signalled})()

    def save_checkpoint(self, filepath, weights_only=False, storage_options=None) -> None:  # noqa: ANN001
        self.saved.append(Path(filepath))


@pytest.mark.parametrize(("world_size", "signal_here"), [(1, True), (2, False)])
def test_preemption_checkpoint_saves_through_the_public_trainer_api(tmp_path, world_size, signal_here):
    """On the signal (in this process, or under DDP in another rank), every rank saves through
    ``trainer.save_checkpoint`` at the step boundary and then hands over to the previous handler (submitit's)."""
    handed_over = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: handed_over.append(signum))
    trainer = PublicTrainer(world_size)
    callback = PreemptionCheckpoint(str(tmp_path))
    try:
        callback.on_train_start(trainer, None)
        trainer.global_step += 1  # each batch ends with an optimizer step (no gradient accumulation)
        callback.on_train_batch_end(trainer, None, None, None, 0)
        assert trainer.saved == [] and handed_over == []  # nothing yet (DDP: flag only, that rank not signalled)
        if signal_here:
            os.kill(os.getpid(), signal.SIGUSR2)
        else:
            trainer.others_signalled = True
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, None, None, None, 1)
        callback.teardown(trainer, None, "fit")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert trainer.saved == [tmp_path / "preempted.ckpt"] and handed_over == [signal.SIGUSR2]


def test_configs_written_before_the_split_still_name_a_working_preemption_callback(tmp_path):
    """A requeued job reloads its pickled config, which may still say gridface.cluster.PreemptionCheckpoint."""
    from hydra.utils import instantiate

    old = instantiate({"_target_": "gridface.cluster.PreemptionCheckpoint", "dirpath": str(tmp_path)})
    assert isinstance(old, PreemptionCheckpoint) and old.path == tmp_path / "preempted.ckpt"


def test_ckpt_path_auto_takes_the_newest_checkpoint_of_the_run_folder(tmp_path):
    import torch

    from gridface.training.resume import SETTINGS_KEY

    assert resolve_ckpt_path("auto", tmp_path) is None  # a fresh run
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    settings = {"module.optimizer.max_lr": 0.001, "seed": 42}
    for i, name in enumerate(["step.ckpt", "last.ckpt", "best.ckpt"]):
        torch.save({"global_step": i, SETTINGS_KEY: settings}, ckpts / name)
        os.utime(ckpts / name, ns=(10**18 + i, 10**18 + i))
    assert resolve_ckpt_path("auto", tmp_path, settings) == str(ckpts / "last.ckpt")  # never best.ckpt
    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="ckpt_path: checkpoint not found: .*nope.ckpt"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)
    # a run folder trained under other settings is not resumed into this run; an explicit path still is
    with pytest.raises(ValueError, match=r"other settings \(module.optimizer.max_lr: 0.001 -> 0.005\).*new folder.*"
                                         r"start from its weights with model=.*last.ckpt"):
        resolve_ckpt_path("auto", tmp_path, {**settings, "module.optimizer.max_lr": 0.005})
    with pytest.raises(ValueError, match=r"other settings \(seed: 42 -> 0\).*continue that run under the new "
                                         r"settings with ckpt_path=.*last.ckpt"):
        resolve_ckpt_path("auto", tmp_path, {**settings, "seed": 0})
    assert resolve_ckpt_path(str(ckpts / "last.ckpt"), tmp_path, {**settings, "seed": 0}) == str(ckpts / "last.ckpt")
    # ...but not under another optimizer: the resume restores the old one and its schedule, the new never applied
    with pytest.raises(ValueError, match=r"ckpt_path=.*last.ckpt: module.optimizer.max_lr: 0.001 -> 0.005: a resume "
                                         r"restores the optimizer .* model=.*last.ckpt in a new folder"):
        resolve_ckpt_path(str(ckpts / "last.ckpt"), tmp_path, {**settings, "module.optimizer.max_lr": 0.005})
    # a damaged newest checkpoint: a warning naming it, and the next newest
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:200])
    with pytest.warns(UserWarning, match=r"not resuming from .*last.ckpt: not a PyTorch checkpoint"):
        assert resolve_ckpt_path("auto", tmp_path, settings) == str(ckpts / "step.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=.*last.ckpt: not a PyTorch checkpoint"):
        resolve_ckpt_path(str(ckpts / "last.ckpt"), tmp_path)
    (ckpts / "step.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="every checkpoint in .* is damaged"), pytest.warns(UserWarning):
        resolve_ckpt_path("auto", tmp_path, settings)


def test_a_retrain_folder_resumed_from_another_pruned_model_is_refused_naming_it(tmp_path):
    """experiment=retrain model=<a pruned.ckpt>, rerun in its folder with model=<another pruned.ckpt>: the widths come
    from the file, not the config, so ckpt_path=auto took the folder's checkpoint and torch stopped with ~100 lines
    of size mismatches. The start's widths are now among the settings a resume compares."""
    import torch

    from gridface.training.resume import SETTINGS_KEY, WIDTHS_KEY, training_settings

    for name, kept in (("a", 32), ("b", 48)):
        torch.save({"hyper_parameters": {"model": {"widths": {"backbone.layer1.0.conv1": [64, kept]}}}},
                   tmp_path / f"{name}.ckpt")
    settings = {name: training_settings(compose_train(tmp_path, [f"model={tmp_path / name}.ckpt"])) for name in "ab"}
    assert settings["a"][WIDTHS_KEY].startswith("pruned (32 channels, ")
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"global_step": 3, SETTINGS_KEY: settings["a"]}, ckpts / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path / "run", settings["a"]) == str(ckpts / "last.ckpt")
    with pytest.raises(ValueError, match=r"other settings \(module.model.widths: pruned \(32 channels, .*\) -> "
                                         r"pruned \(48 channels"):
        resolve_ckpt_path("auto", tmp_path / "run", settings["b"])
    with pytest.raises(ValueError, match=r"last.ckpt: module.model.widths: .*holds another network"):
        resolve_ckpt_path(str(ckpts / "last.ckpt"), tmp_path / "run", settings["b"])
    # a checkpoint of an earlier gridface, which did not record the widths: resumed as before
    older = {k: v for k, v in settings["a"].items() if k != WIDTHS_KEY}
    torch.save({"global_step": 3, SETTINGS_KEY: older}, ckpts / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path / "run", settings["a"]) == str(ckpts / "last.ckpt")


def test_a_quantization_aware_run_resumed_without_its_quantizers_is_refused_saying_how_to_resume_it(tmp_path):
    """A QAT run folder rerun without callbacks/quantize=qat was told to "continue that run under the new settings
    with ckpt_path=<its last.ckpt>", which then stopped in torch's load_state_dict with 40 unexpected quantizer
    keys: the fake quantizers are part of the network a checkpoint holds."""
    import torch

    from gridface.training.resume import SETTINGS_KEY, training_settings

    qat, float_run = (training_settings(compose_train(tmp_path, extra)) for extra in (["callbacks/quantize=qat"], []))
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"global_step": 3, SETTINGS_KEY: qat}, ckpts / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path / "run", qat) == str(ckpts / "last.ckpt")
    for given in ("auto", str(ckpts / "last.ckpt")):
        with pytest.raises(ValueError, match=r"callbacks\.quantize\._target_: gridface\.training\.qat\."
                                             r"QuantizeCallback -> <unset>.*resume it with the quantization it was "
                                             r"trained with "
                                             r"\(experiment=qat, or callbacks/quantize=qat") as refused:
            resolve_ckpt_path(given, tmp_path / "run", float_run)
        assert "ckpt_path=" not in str(refused.value).split("QuantizeCallback")[-1]
    # what does not decide the network is not compared: the first calibration's batch count, the model= it began from
    changed = {**qat, "callbacks.quantize.calibration_batches": 2, "callbacks.quantize.model": None}
    assert resolve_ckpt_path(str(ckpts / "last.ckpt"), tmp_path / "run", changed) == str(ckpts / "last.ckpt")
    # a float run's checkpoint from before callbacks.quantize was recorded resumes as a float run
    torch.save({"global_step": 3, SETTINGS_KEY: {k: v for k, v in float_run.items() if not k.startswith(
        "callbacks.quantize")}}, ckpts / "last.ckpt")
    for given in ("auto", str(ckpts / "last.ckpt")):
        assert resolve_ckpt_path(given, tmp_path / "run", float_run) == str(ckpts / "last.ckpt")


def test_a_requeued_job_given_ckpt_path_goes_on_from_its_own_newest_checkpoint(tmp_path, monkeypatch):
    """``sbatch train.sbatch ckpt_path=<other run>/last.ckpt`` (or a submitit job) is requeued with the same
    command: taking that checkpoint again threw away all the job had trained before its preemption, at every
    requeue. A requeued job (SLURM_RESTART_COUNT) goes on from the newest checkpoint it wrote itself (its job id is
    in every checkpoint; a requeue keeps the id); checkpoints another job left in the folder do not count."""
    import torch

    from gridface.training.resume import SETTINGS_KEY, SLURM_JOB_KEY

    settings = {"module.optimizer.max_lr": 0.001, "seed": 42}

    def save(path, step, job, age):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": step, SETTINGS_KEY: settings, SLURM_JOB_KEY: job}, path)
        os.utime(path, ns=(10**18 + age, 10**18 + age))

    start, run = tmp_path / "earlier_run" / "last.ckpt", tmp_path / "run"
    save(start, 100, "12", age=0)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert resolve_ckpt_path(str(start), run, settings) == str(start)  # the first start: nothing of its own yet
    save(run / "checkpoints" / "last.ckpt", 150, "77", age=1)
    save(run / "checkpoints" / "preempted.ckpt", 151, "77", age=2)
    assert resolve_ckpt_path(str(start), run, settings) == str(start)  # not requeued: the path as given
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_ckpt_path(str(start), run, settings) == str(run / "checkpoints" / "preempted.ckpt")
    # its own last.ckpt named: the newer preempted.ckpt still wins
    assert resolve_ckpt_path(str(run / "checkpoints" / "last.ckpt"), run, settings) == str(
        run / "checkpoints" / "preempted.ckpt")
    # a folder trained under other settings is not this job's progress: the path as given
    assert resolve_ckpt_path(str(start), run, {**settings, "seed": 7}) == str(start)
    # a rollback inside a reused folder, requeued before this job wrote anything: the newer last.ckpt is another
    # job's, and the checkpoint given is kept
    for name in ("preempted.ckpt", "last.ckpt"):
        save(run / "checkpoints" / name, 150, "12", age=3)
    save(run / "checkpoints" / "step.ckpt", 120, "12", age=0)
    assert resolve_ckpt_path(str(run / "checkpoints" / "step.ckpt"), run, settings) == str(
        run / "checkpoints" / "step.ckpt")


def test_ddp_inside_a_local_sweep_stops_with_a_clear_message(tmp_path):
    cfg = compose_train(tmp_path, ["trainer=ddp_cpu"])
    with pytest.raises(ConfigError, match="inside a local -m sweep.*hydra/launcher=slurm"):
        check_ddp_launch(cfg.trainer, multirun=True)
    check_ddp_launch(cfg.trainer, multirun=False)  # a single run: Lightning starts the ranks itself
    with open_dict(cfg):
        cfg.trainer.strategy = "ddp_spawn"
    check_ddp_launch(cfg.trainer, multirun=True)


SLURM_2x4_RANK5 = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
                   "SLURM_NODEID": "1", "SLURM_JOB_NAME": "gridface", "SLURM_JOB_ID": "4242",
                   "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2"}


def test_trainer_under_slurm_takes_ranks_from_slurm_and_leaves_requeue_to_submitit(monkeypatch):
    for k, v in SLURM_2x4_RANK5.items():
        monkeypatch.setenv(k, v)
    plugins = cluster_plugins()
    assert len(plugins) == 1 and plugins[0].auto_requeue is False
    trainer = pl.Trainer(accelerator="cpu", devices=4, num_nodes=2, strategy="ddp", plugins=plugins,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)


def test_slurm_launcher_config_gives_one_task_per_device_on_each_node(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.account=faces", "hydra.launcher.timeout_min=600",
                                          "hydra.launcher.setup=[source .venv/bin/activate]",
                                          "+hydra.launcher.additional_parameters.mail-type=END"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["max_num_timeout"] > 0  # the plugin's default 0 never requeues after a time limit
    # the sbatch script submitit writes for these parameters, as the plugin passes them (no srun here: submitit
    # is told it is on a cluster)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=3)
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
            "stderr_to_stdout"}
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items() if k not in skip})
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=faces", "#SBATCH --time=600",
                 "#SBATCH --signal=USR2@120", "#SBATCH --mail-type=END", "source .venv/bin/activate"):
        assert line in text, line
    assert "#SBATCH --gpus-per-task" not in text
    assert "srun" in text and "submitit.core._submit" in text


@pytest.mark.parametrize("slurm_here", [True, False])
def test_a_sweep_its_slurm_launcher_cannot_submit_is_one_line_before_any_job(capsys, monkeypatch, slurm_here):
    """-m hydra/launcher=slurm with trainer.devices=auto ended in OmegaConf's traceback from inside the launcher
    (tasks_per_node is a number); without Slurm, in submitit's ('Could not detect "srun"')."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from gridface.training import launch
    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=cpu", "trainer.devices=auto"],
                      return_hydra_config=True)
        fine = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
    assert cfg.hydra.callbacks.launcher_check._target_ == "gridface.training.launch.LauncherCheck"
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}" if slurm_here else None)
    with pytest.raises(SystemExit) as e:
        launch.LauncherCheck().on_multirun_start(cfg)
    assert e.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    if slurm_here:
        assert line.startswith("gridface.train: error: hydra.launcher.tasks_per_node: ") and "'auto'" in line
        assert "trainer.devices and trainer.num_nodes must be numbers" in line
        launch.LauncherCheck().on_multirun_start(fine)  # a launcher that can submit goes on
    else:
        assert line.startswith("gridface.train: error: hydra/launcher=slurm: no Slurm on this machine (srun and "
                               "sbatch not on PATH)")


def test_a_sweep_to_a_partition_slurm_does_not_have_is_one_line_naming_those_it_has(tmp_path, capsys, monkeypatch):
    """hydra.launcher.partition=<a typo>: sbatch's 'invalid partition specified' came as the last line of submitit's
    traceback from inside the launcher. Checked first against sinfo (here a stand-in printing two partitions)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from gridface.training import launch
    from gridface.utils.hydra import config_dir

    for tool, script in (("sinfo", "printf 'debug\\ngpu\\n'"), ("srun", "exit 0"), ("sbatch", "exit 0")):
        (tmp_path / tool).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        typo, listed, several = (
            compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu", f"hydra.launcher.partition={p}"],
                    return_hydra_config=True) for p in ("gpus", "gpu", "'debug,gpu'"))
    with pytest.raises(SystemExit) as e:
        launch.LauncherCheck().on_multirun_start(typo)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == ("gridface.train: error: hydra.launcher.partition=gpus: Slurm "
                                                       "has no partition gpus (sinfo lists debug, gpu)")
    for fine in (listed, several):
        launch.LauncherCheck().on_multirun_start(fine)
    assert launch.unknown_partition({"partition": "gpus", "additional_parameters": {"clusters": "other"}}) is None


def test_cpu_ddp_launcher_config_asks_for_no_gpus(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node is None and cfg.hydra.launcher.tasks_per_node == 2


def kitti_split(root: Path, name: str, n: int, seed: int, truncate: int) -> None:
    """A KITTI split of synthetic faces with one truncated JPEG (an image every reader must skip)."""
    import shutil

    from gridface.data.synthetic import SyntheticSpec, generate

    src = generate(root / "gen", SyntheticSpec(num_images=n, seed=seed, width=192, height=128))
    shutil.copytree(src, root / name)
    bad = sorted((root / name / "images").glob("*.jpg"))[truncate]
    bad.write_bytes(bad.read_bytes()[:300])


class OracleModule(GridBoxModule):
    """Validation 'detects' each image's own ground truth (distinct scores): AP50 is 1.0 exactly when every image's
    detections meet its own ground truth, whatever the weights. So the DDP gathering is checked with no training and
    no learned AP to hope for."""

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        from gridface.evaluation.metrics import image_record
        from gridface.postprocess import Detections

        self.note_skips(batch)
        if "image" not in batch:
            return
        for lb, gb, gl, gi in zip(batch["letterbox"], batch["gt_boxes"], batch["gt_labels"], batch["gt_ignore"],
                                  strict=True):
            scores = np.linspace(1.0, 0.5, len(gb)).astype(np.float32)
            det = Detections(lb.to_input(gb.astype(np.float32)), scores, gl.astype(np.int64))
            d, g = image_record(det, lb, gb, gl, gi, self.decoder.min_height)
            self._val_dets.append(d)
            self._val_gts.append(g)
        self._val_paths.extend(batch["path"])


@pytest.mark.slow
def test_two_process_ddp_counts_each_validation_image_once_and_survives_unreadable_batches(tmp_path):
    """2 CPU ranks (gloo, spawned): batch size 1, so each rank meets a batch whose only image is unreadable in
    training and in validation; the distributed sampler pads 6 readable + 1 unreadable validation images to 8.
    Training finishes, and validation counts each readable image once, each with its own detections (an oracle
    that detects the ground truth scores AP50 1.0 in one process and across the two ranks)."""
    kitti_split(tmp_path / "data", "train", 8, seed=3, truncate=2)
    kitti_split(tmp_path / "data", "val", 7, seed=4, truncate=3)
    over = ["dataset=kitti", f"dataset.root={tmp_path / 'data'}", "dataset.input_width=192",
            "dataset.input_height=128", "dataset.batch_size=1", "dataset.num_workers=0", "logger=none",
            "recipe=synthetic_cpu", "print_config=false", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
            "evaluation.coco=false", "checkpoint_every_n_steps=0"]
    from gridface.train import build

    module, datamodule, trainer = build(compose_train(tmp_path / "one", over))
    (ref,) = trainer.validate(OracleModule(**dict(module.hparams)), datamodule=datamodule)
    assert ref["val/images"] == 6 and ref["val/AP50"] == pytest.approx(1.0)

    two = compose_train(tmp_path / "two", [*over, "trainer.strategy=ddp_spawn", "trainer.devices=2"])
    module2, datamodule2, trainer2 = build(two)
    trainer2.fit(module2, datamodule=datamodule2)  # an all-unreadable training batch on a rank: no hang
    import torch

    last = torch.load(Path(two.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4  # 7 readable of 8 images, 2 ranks, batch 1: 4 steps, the padded ones too
    module3, datamodule3, trainer3 = build(two)
    (got,) = trainer3.validate(OracleModule(**dict(module3.hparams)), datamodule=datamodule3)
    assert got["val/images"] == 6 and got["val/AP50"] == pytest.approx(1.0)


@pytest.mark.slow
def test_tune_runs_trials_resumes_the_study_and_writes_the_best_as_an_experiment(tmp_path):
    pytest.importorskip("optuna")
    from gridface.tune import run as tune_run
    from gridface.utils.hydra import config_dir

    from .helpers import compose_config

    over = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "checkpoint_every_n_steps=0", f"tune.dir={tmp_path / 'study'}", "tune.n_trials=2", "tune.seed=0",
            "tune.pruner=none"]
    first = tune_run(compose_config("tune", tmp_path / "w0", tmp_path / "cache", over))
    assert (first["trials"], first["complete"]) == (2, 2)
    again = tune_run(compose_config("tune", tmp_path / "w1", tmp_path / "cache", [*over, "tune.n_trials=1"]))
    assert again["trials"] == 3  # the study resumed: 2 earlier trials + 1
    best = tmp_path / "study" / "experiment" / "best.yaml"
    assert best.read_text().startswith("# @package _global_") and "max_lr" in best.read_text()
    assert len((tmp_path / "study" / "trials.csv").read_text().splitlines()) == 4
    # the experiment file composes into a training config
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path / 'study'}]", "experiment=best"])
    assert cfg.optimizer.max_lr == pytest.approx(again["best_params"]["optimizer.max_lr"])


def test_tuning_trial_is_pruned_when_its_metric_trails():
    optuna = pytest.importorskip("optuna")
    from gridface.tune import ReportToTrial

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_warmup_steps=0,
                                                                                        n_startup_trials=1))
    for value in (0.8, 0.9):  # two finished trials that reached 0.8 and 0.9 at epoch 0
        t = study.ask()
        t.report(value, 0)
        study.tell(t, value)
    trial = study.ask()

    class FakeTrainer:
        sanity_checking, current_epoch = False, 0
        callback_metrics = {"val/AP50": 0.1}

    with pytest.raises(optuna.TrialPruned, match="val/AP50 trails the median at epoch 0"):
        ReportToTrial(trial, "val/AP50").on_validation_end(FakeTrainer(), None)
    good = study.ask()
    FakeTrainer.callback_metrics = {"val/AP50": 0.95}
    ReportToTrial(good, "val/AP50").on_validation_end(FakeTrainer(), None)  # ahead of the median: runs on


def test_a_diverging_tuning_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import csv

    from gridface import tune
    from gridface.utils.finite import NonFiniteError

    from .helpers import compose_config

    calls = []

    def train_run(cfg, callbacks):  # trial 0 diverges, as a high learning rate does; the others finish
        calls.append(cfg.optimizer.max_lr)
        if len(calls) == 1:
            raise NonFiniteError("training stopped at global step 3 (epoch 0): the loss is nan, at lr, here")
        return {"metrics": {"val/AP50": 0.5 + len(calls) / 10}}

    monkeypatch.setattr(tune, "train_run", train_run)
    over = [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.n_trials=3", "tune.seed=0", "tune.pruner=none"]
    summary = tune.run(compose_config("tune", tmp_path / "w0", tmp_path / "cache", over))
    assert len(calls) == 3 and (summary["complete"], summary["failed"]) == (2, 1)
    assert summary["best_value"] == pytest.approx(0.8)
    rows = list(csv.DictReader((tmp_path / "study" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert rows[0]["reason"].startswith("training stopped at global step 3") and rows[0]["reason"].endswith("here")


def test_a_tune_metric_training_does_not_log_is_an_error_before_the_first_trial(tmp_path, monkeypatch):
    """tune.metric=val/ap50 (a typo) was reported after the first trial had trained in full."""
    pytest.importorskip("optuna")
    from gridface import tune

    from .helpers import compose_config

    monkeypatch.setattr(tune, "train_run", lambda cfg, callbacks: pytest.fail("a trial trained"))
    over = [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.metric=val/ap50"]
    with pytest.raises(ValueError, match=r"tune.metric = 'val/ap50': not a metric training logs; one of val/AP50, "
                                         r"val/AP50_face, val/mAP, val/AR, val/images, val/loss"):
        tune.run(compose_config("tune", tmp_path / "w0", tmp_path / "cache", over))


def test_the_search_space_is_given_nested_or_dotted_and_checked_before_the_study(tmp_path, monkeypatch):
    """+tune.search_space.optimizer.weight_decay={...} (the --help's form) nested the key and ended in a KeyError
    traceback after a FAIL trial; narrowing tune.search_space.optimizer.max_lr.high= was 'not in struct'; a config
    group (network) was a traceback from inside the override step."""
    pytest.importorskip("optuna")
    from gridface import tune

    from .helpers import compose_config

    seen = []
    monkeypatch.setattr(tune, "train_run", lambda cfg, callbacks: seen.append(cfg) or {"metrics": {"val/AP50": 0.5}})
    over = [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.n_trials=1", "tune.search_space.optimizer.max_lr.high=1e-3",
            "+tune.search_space.optimizer.weight_decay={type:float,low:0.0,high:1.0e-4}",
            "+tune.search_space={loss.cov_weight:{type:float,low:0.5,high:2.0}}"]
    summary = tune.run(compose_config("tune", tmp_path / "w0", tmp_path / "cache", over))
    params = summary["best_params"]
    assert set(params) == {"optimizer.max_lr", "optimizer.soft_start", "loss.bbox_weight", "optimizer.weight_decay",
                           "loss.cov_weight"}
    assert params["optimizer.max_lr"] <= 1e-3 and seen[0].optimizer.weight_decay == params["optimizer.weight_decay"]
    for bad, message in [("+tune.search_space.network={type:categorical,choices:[resnet18,resnet10]}",
                          r"'network' is a group of settings, not one value; search a key in it"),
                         ("+tune.search_space.optimizer.nope={type:float,low:0,high:1}",
                          r"'optimizer.nope' is not a key of the training config"),
                         ("+tune.search_space.optimizer.max_lr.lo=1", r"optimizer.max_lr: \['lo'\] are not among")]:
        with pytest.raises(ValueError, match=message):
            tune.run(compose_config("tune", tmp_path / "w1", tmp_path / "cache",
                                    [*TINY, f"tune.dir={tmp_path / 'bad'}", bad]))
    assert len(seen) == 1


def test_a_study_resumed_under_other_settings_is_refused(tmp_path, monkeypatch):
    """A study started at 96 px and resumed at 64 px ranked both kinds of trial together, and best.json's command
    (the second run's overrides) did not reproduce the best trial."""
    pytest.importorskip("optuna")
    from gridface import tune

    from .helpers import compose_config

    monkeypatch.setattr(tune, "train_run", lambda cfg, callbacks: {"metrics": {"val/AP50": 0.5}})
    over = [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.n_trials=1"]
    monkeypatch.setattr(tune, "study_overrides", lambda: ["dataset.input_width=96", "trainer.max_epochs=3"])
    first = tune.run(compose_config("tune", tmp_path / "w0", tmp_path / "cache", over))
    assert "dataset.input_width=96 trainer.max_epochs=3" in first["train_command"]
    monkeypatch.setattr(tune, "study_overrides", lambda: ["trainer.max_epochs=3", "dataset.input_width=96"])
    assert tune.run(compose_config("tune", tmp_path / "w1", tmp_path / "cache", over))["trials"] == 2  # any order
    monkeypatch.setattr(tune, "study_overrides", lambda: ["dataset.input_width=64"])
    with pytest.raises(ValueError, match=r"the study was started with the overrides \['dataset.input_width=96', "
                                         r"'trainer.max_epochs=3'\], this run gives \['dataset.input_width=64'\]"):
        tune.run(compose_config("tune", tmp_path / "w2", tmp_path / "cache", over))


def test_a_ctrl_c_in_a_tuning_trial_marks_it_failed_not_running(tmp_path, monkeypatch):
    """Lightning ends a Ctrl-C'd fit with sys.exit(1), which Optuna does not catch: the trial stayed RUNNING in
    the study on every later resume, and no summary counted it."""
    optuna = pytest.importorskip("optuna")
    from gridface import tune

    from .helpers import compose_config

    def train_run(cfg, callbacks):  # what Lightning's _call_and_handle_interrupt does
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1) from None

    monkeypatch.setattr(tune, "train_run", train_run)
    over = [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.n_trials=2"]
    cfg = compose_config("tune", tmp_path / "w0", tmp_path / "cache", over)
    with pytest.raises(KeyboardInterrupt):
        tune.run(cfg)
    study = optuna.load_study(study_name=cfg.tune.study_name, storage=tune.make_storage(str(cfg.tune.storage)))
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["reason"] == "interrupted (Ctrl-C)"


def test_training_settings_hold_what_decides_the_run_and_not_what_may_change_on_resume(tmp_path):
    from gridface.training.resume import changed_settings, training_settings

    base = training_settings(compose_train(tmp_path, TINY))
    assert base["module.optimizer.max_lr"] == pytest.approx(0.002) and "module.model.backbone" in base
    same = training_settings(compose_train(tmp_path, [*TINY, "trainer.max_epochs=9", "dataset.num_workers=3",
                                                      "threads=1", "compile=true", "checkpoint_every_n_steps=7",
                                                      f"paths.cache_dir={tmp_path / 'elsewhere'}",
                                                      "network.pretrained=/other/node/resnet18.pth",
                                                      # validation and clustering never reach the weights
                                                      "+dataset.eval_gt=/data/wider_face_split",
                                                      "evaluation.iou=0.7", "postprocess=nms"]))
    assert changed_settings(base, same) == ""
    # a checkpoint of an older gridface recorded them: not a difference either
    assert changed_settings({**base, "module.evaluation.iou": 0.5, "module.postprocess.eps": 0.3}, same) == ""
    other = training_settings(compose_train(tmp_path, [*TINY, "network=mobilenet_v2", "seed=1",
                                                       "trainer.accumulate_grad_batches=2"]))
    assert changed_settings(base, other, shown=10).split("; ") == [
        "datamodule.seed: 42 -> 1", "module.model.backbone: resnet18 -> mobilenet_v2", "seed: 42 -> 1",
        "trainer.accumulate_grad_batches: 1 -> 2"]
    assert changed_settings(base, other, shown=2).endswith("; and 2 more")
    pruned = training_settings(compose_train(tmp_path, [*TINY, "callbacks/prune=ratio"]))  # it decides the network
    assert "callbacks.prune.spec.ratio: <unset> -> 0.5" in changed_settings(base, pruned, shown=99)


def test_the_best_trial_command_repeats_the_study_overrides(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from gridface import tune

    class Overrides:
        task = ["experiment=facenet_widerface", "dataset.root=/data/wider face", "tune.n_trials=3", "+tune.seed=1"]

    class Hydra:
        overrides = Overrides()

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Hydra()))
    command = tune.train_command(tune.study_overrides(), {"optimizer.max_lr": 0.0012})
    assert command == ("python -m gridface.train experiment=facenet_widerface 'dataset.root=/data/wider face' "
                       "optimizer.max_lr=0.0012")
    assert f"# trains it with the study's other settings: {command}\n" in tune.best_experiment(
        {"optimizer.max_lr": 0.0012}, 0.5, "val/AP50", 3, command)
