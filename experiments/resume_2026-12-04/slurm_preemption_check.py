"""Exact resume, by hand on the local Slurm cluster: the same 2-rank DDP job (trainer=ddp_cpu, submitit launcher)
once uninterrupted and once preempted with SIGUSR2 mid-run (submitit requeues it, ckpt_path=auto resumes it in its
folder); the final weights and BatchNorm buffers of the two are compared (step.ckpt is written at every step).

    tests/slurm/cluster.sh up
    .venv/bin/python experiments/resume_2026-12-04/slurm_preemption_check.py
    tests/slurm/cluster.sh down
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BIN = Path("/usr/local/lib/gridface-slurm/bin")  # where tests/slurm/cluster.sh keeps Slurm's client commands
WORK = Path(tempfile.mkdtemp(prefix="slurm_preemption_check."))
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SLURM_CONF": "/var/tmp/gridface-slurm/slurm.conf",
       "GRIDFACE_ROOT": str(WORK), "NO_ALBUMENTATIONS_UPDATE": "1"}
ARGS = ["trainer=ddp_cpu", "dataset.train.num_images=24", "dataset.val.num_images=8", "dataset.batch_size=4",
        "dataset.num_workers=0", "print_config=false", "logger=none", "checkpoint_every_n_steps=1",
        "trainer.limit_val_batches=1", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15",
        "trainer.max_epochs=6", "trainer.limit_train_batches=3"]


def launch(sweep: Path) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "gridface.train", "-m", "hydra/launcher=slurm",
                             *ARGS, f"hydra.sweep.dir={sweep}"], cwd=WORK, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def main() -> None:
    ref, pre = WORK / "ref", WORK / "pre"
    start = time.time()
    job = launch(ref)
    out, _ = job.communicate(timeout=900)
    assert job.returncode == 0, out[-3000:]
    print(f"uninterrupted job done in {time.time() - start:.0f} s")

    job = launch(pre)
    step_ckpt = pre / "0" / "checkpoints" / "step.ckpt"
    step = 0
    while step < 7:  # mid-run: step 7 of 18 (epoch 3 of 6)
        assert job.poll() is None, "the job ended before step 7"
        if step_ckpt.is_file():
            try:
                step = torch.load(step_ckpt, weights_only=False)["global_step"]
            except Exception:  # noqa: BLE001 - read while being replaced
                step = 0
        time.sleep(0.3)
    job_id = next(p.name for p in (pre / ".submitit").iterdir() if p.is_dir())
    subprocess.run([str(BIN / "scancel"), "--signal=USR2", job_id], env=ENV, check=True)
    print(f"SIGUSR2 to job {job_id} after step.ckpt at step {step}")
    out, _ = job.communicate(timeout=900)
    assert job.returncode == 0, out[-3000:]

    a = torch.load(ref / "0" / "checkpoints" / "step.ckpt", weights_only=False)
    b = torch.load(pre / "0" / "checkpoints" / "step.ckpt", weights_only=False)
    preempted = torch.load(pre / "0" / "checkpoints" / "preempted.ckpt", weights_only=False)
    result = json.loads((pre / "0" / "result.json").read_text())
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((pre / ".submitit").glob("*/*_log.*")))
    diff = max((a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max().item() for k in a["state_dict"])
    print(f"preempted.ckpt at step {preempted['global_step']}; resumed from {result['resumed_from']}; final steps "
          f"{a['global_step']} (uninterrupted) and {b['global_step']} (preempted)")
    print(f"requeued: {'Requeued job' in logs}; largest |difference| over {len(a['state_dict'])} weight and buffer "
          f"tensors: {diff:.3g}")


if __name__ == "__main__":
    main()
