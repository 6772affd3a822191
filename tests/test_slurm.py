"""Against a real Slurm (tests/slurm/cluster.sh up; make test-slurm does it): a DDP sweep through Hydra's submitit
launcher, a preempted job that requeues and resumes, and an Optuna study shared by two Slurm workers. Each
launch is a subprocess with a timeout, since a job that dies without its result file would hang the launcher."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from .helpers import made_beside, take_every_stamp

ROOT = Path(__file__).resolve().parents[1]
SLURM_BIN = Path("/usr/local/lib/gridface-slurm/bin")  # where tests/slurm/cluster.sh keeps the client commands
SLURM_CONF = Path(os.environ.get("GRIDFACE_SLURM_STATE", "/var/tmp/gridface-slurm")) / "slurm.conf"
TINY = ["dataset.train.num_images=24", "dataset.val.num_images=8", "dataset.batch_size=4", "dataset.num_workers=0",
        "print_config=false", "logger=none", "checkpoint_every_n_steps=0", "trainer.limit_val_batches=1",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15"]


def slurm_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{SLURM_BIN}:{os.environ['PATH']}", "SLURM_CONF": str(SLURM_CONF),
            "GRIDFACE_ROOT": str(ROOT)}


def cluster_missing() -> str:
    if not (SLURM_BIN / "sinfo").exists() or not SLURM_CONF.is_file():
        return "no local Slurm cluster (make test-slurm, or tests/slurm/cluster.sh up, starts one)"
    out = subprocess.run([str(SLURM_BIN / "sinfo"), "-h", "-o", "%t"], capture_output=True, text=True,
                         env=slurm_env(), timeout=20)
    if out.returncode or not out.stdout.strip():
        return f"the local Slurm cluster does not answer: {out.stderr.strip()[:200]}"
    return ""


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(bool(cluster_missing()), reason=cluster_missing() or "n/a")]


def gridface(stage: str, args: list[str], cwd: Path, timeout: float,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", f"gridface.{stage}", "-m", "hydra/launcher=slurm", *args],
                              cwd=cwd, env=env or slurm_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run([str(SLURM_BIN / "scancel"), "--user", os.environ.get("USER", "root")], env=slurm_env())
        raise


def submitit_logs(sweep: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


def test_ddp_sweep_runs_one_job_per_override_each_with_two_ranks(tmp_path):
    """The sweep's default folder, with this second's name taken by another sweep: the Slurm jobs (submitit's
    pickled config) run in the folder the sweep made, not in a name of their own second."""
    multiruns = tmp_path / "outputs" / "train" / "multiruns"
    taken = take_every_stamp(multiruns)
    start = time.perf_counter()
    out = gridface("train", ["trainer=ddp_cpu", "seed=1,2", *TINY, "trainer.max_epochs=1",
                             "trainer.limit_train_batches=2", f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path,
                   timeout=400, env={**slurm_env(), "GRIDFACE_ROOT": str(tmp_path)})
    wall = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    sweep = made_beside(multiruns, taken)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]  # one run folder per job, none per rank
    for job in jobs:
        folder = sweep / job
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "result.json").is_file()
        assert (folder / "train.log").is_file() and (folder / "train_rank1.log").is_file()  # a log per rank
    logs = submitit_logs(sweep)
    assert logs.count("MEMBER: 1/2") == 2 and logs.count("MEMBER: 2/2") == 2  # world size 2 in each job
    print(f"\nslurm sweep: 2 jobs x 2 DDP ranks, {wall:.1f} s wall from command to results")


def resume_latency(log: Path, signalled_at: float) -> float:
    """Seconds from the signal to the resumed run's 'resuming from' log line."""
    for line in log.read_text().splitlines():
        m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]\[gridface\.training\.resume\]\[INFO\] - resuming "
                     r"from", line)
        if m:
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - signalled_at
    raise AssertionError(f"no 'resuming from' line in {log}")


def test_preempted_job_requeues_and_resumes_in_its_folder_to_the_same_step(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["trainer=ddp_cpu", *TINY, "trainer.max_epochs=6", "trainer.limit_train_batches=3",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen([sys.executable, "-m", "gridface.train", "-m", "hydra/launcher=slurm", *args],
                            cwd=tmp_path, env=slurm_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        last = sweep / "0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 300
        while not last.is_file():  # the first epoch is done: the job is mid-run
            assert proc.poll() is None and time.time() < deadline, "the job never reached its first checkpoint"
            time.sleep(0.5)
        job_id = next(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())
        signalled_at = time.time()
        subprocess.run([str(SLURM_BIN / "scancel"), "--signal=USR2", job_id], env=slurm_env(), check=True)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run([str(SLURM_BIN / "scancel"), "--user", os.environ.get("USER", "root")], env=slurm_env())
    assert proc.returncode == 0, output[-3000:] + submitit_logs(sweep)[-3000:]
    folder = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]  # same folder
    preempted = torch.load(folder / "checkpoints" / "preempted.ckpt", weights_only=False)
    import json

    result = json.loads((folder / "result.json").read_text())
    assert result["resumed_from"].endswith("preempted.ckpt")
    assert result["global_step"] == 6 * 3  # what an uninterrupted run ends at
    logs = submitit_logs(sweep)
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
    latency = resume_latency(folder / "train.log", signalled_at)
    print(f"\nslurm preemption: checkpoint at global step {preempted['global_step']}, requeued and resumed "
          f"{latency:.1f} s after the signal, finished at step {result['global_step']} (uninterrupted: 18)")


def test_optuna_study_shared_by_two_slurm_workers_completes(tmp_path):
    study = tmp_path / "study"
    out = gridface("tune", ["tune.worker=0,1", "tune.n_trials=1", "tune.seed=0", "tune.pruner=none",
                            f"tune.dir={study}", f"tune.storage=journal:{study / 'journal.log'}", *TINY,
                            "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                            f"hydra.sweep.dir={tmp_path / 'workers'}", f"paths.cache_dir={tmp_path / 'cache'}"],
                   tmp_path, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:] + submitit_logs(tmp_path / "workers")[-3000:]
    import json

    best = json.loads((study / "best.json").read_text())
    assert best["trials"] == 2 and best["complete"] == 2
    workers = {line.split(",")[3] for line in (study / "trials.csv").read_text().splitlines()[1:]}
    assert workers == {"0", "1"}  # each worker ran a trial of the one study


def test_pipeline_sends_each_stage_that_must_run_to_slurm_as_its_own_job(tmp_path):
    args = ["experiment=pipeline_smoke", "hydra/launcher=slurm", "pipeline.stages=[train,prune]",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", "trainer.limit_train_batches=2",
            f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "gridface.pipeline", *args]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=tmp_path, env=slurm_env(), capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired:
        subprocess.run([str(SLURM_BIN / "scancel"), "--user", os.environ.get("USER", "root")], env=slurm_env())
        raise
    wall = time.perf_counter() - start
    run_dir = tmp_path / "outputs" / "pipeline" / "smoke"
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("*/submitit/*/*_log.*")))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:] + logs[-3000:]
    import json

    for stage in ("train", "prune"):
        assert re.search(rf"pipeline: {stage} submitted as slurm job \d+", out.stdout), out.stdout[-2000:]
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["status"] == "done" and list((run_dir / stage / "submitit").glob("*/*_log.out"))
    assert (run_dir / "prune" / "pruned.ckpt").is_file() and not (run_dir / "retrain").exists()
    again = subprocess.run(cmd, cwd=tmp_path, env=slurm_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout and "submitted" not in again.stdout
    print(f"\nslurm pipeline: train and prune as two Slurm jobs, {wall:.1f} s from command to results")


def test_a_partition_slurm_does_not_have_is_named_with_those_it_has(monkeypatch):
    """A typo in hydra.launcher.partition ended in submitit's traceback, sbatch's message as its last line: the
    launcher check reads this cluster's sinfo (the sweep's one line: tests/test_cluster.py)."""
    from gridface.training.launch import unknown_partition

    for key, value in slurm_env().items():
        monkeypatch.setenv(key, value)
    assert unknown_partition({"partition": "nope"}) == ("hydra.launcher.partition=nope: Slurm has no partition nope "
                                                        "(sinfo lists debug)")
    assert unknown_partition({"partition": "debug"}) is None
