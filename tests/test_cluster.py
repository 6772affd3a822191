"""Cluster pieces that run without a cluster: resume-after-preemption through the real signal path, the
resume-path rule, the sbatch script and the Trainer a 2-node x 4-device job gets, and DDP that counts each
validation image once (2 CPU processes against 1)."""

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import open_dict

from gridface.cluster import check_ddp_launch, cluster_plugins, resolve_ckpt_path
from gridface.train import run
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
def test_preempted_run_checkpoints_on_the_signal_and_resumes_to_the_same_step(tmp_path):
    over = [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
            "checkpoint_every_n_steps=0", "logger=none"]
    plain = run(compose_train(tmp_path / "plain", over))
    assert plain["global_step"] == 12 and plain["resumed_from"] is None

    cfg = compose_train(tmp_path / "preempted", over)
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        from gridface import train as train_module

        build = train_module.build

        def build_with_signal(c):  # noqa: ANN001, ANN202
            module, datamodule, trainer = build(c)
            trainer.callbacks.insert(0, SignalAtStep(6))  # mid-epoch 2 of 3
            return module, datamodule, trainer

        train_module.build = build_with_signal
        with pytest.raises(SystemExit):
            run(cfg)
    finally:
        train_module.build = build
        signal.signal(signal.SIGUSR2, previous)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    import torch

    saved = torch.load(ckpts / "preempted.ckpt", weights_only=False)
    assert saved["global_step"] == 6  # the step the signal came in, kept whole
    resumed = run(compose_train(tmp_path / "preempted", over))  # same folder, ckpt_path=auto
    assert resumed["resumed_from"] == str(ckpts / "preempted.ckpt")
    assert resumed["global_step"] == plain["global_step"]
    assert Path(resumed["best_checkpoint"]).is_file() and resumed["best_score"] is not None


def test_ckpt_path_auto_takes_the_newest_checkpoint_of_the_run_folder(tmp_path):
    assert resolve_ckpt_path("auto", tmp_path) is None  # a fresh run
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for i, name in enumerate(["step.ckpt", "last.ckpt", "best.ckpt"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, ns=(10**18 + i, 10**18 + i))
    assert resolve_ckpt_path("auto", tmp_path) == str(ckpts / "last.ckpt")  # best.ckpt is never resumed from
    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="ckpt_path: checkpoint not found: .*nope.ckpt"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


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


def test_cpu_ddp_launcher_config_asks_for_no_gpus(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node is None and cfg.hydra.launcher.tasks_per_node == 2
