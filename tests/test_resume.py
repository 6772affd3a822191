"""Exact resume: a run killed (SIGKILL after step.ckpt, or preempted with SIGUSR2) mid-epoch and started again
trains every sample of each epoch once, with the same augmentation, and ends with the uninterrupted run's weights
and BatchNorm statistics (single process with a loader worker, and 2-rank DDP on CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from gridface.data.datamodule import GridBoxDataModule
from gridface.train import run
from gridface.training.resume import resolve_ckpt_path

from .helpers import TINY, compose_config
from .resume_probe import Interrupted, Probe, history, max_difference, names_per_epoch

ROOT = Path(__file__).resolve().parents[1]
# 24 training images in batches of 4: 6 steps an epoch, 18 in all; step.ckpt every 4 steps (4, 8, 12, 16)
OVER = [*TINY, "dataset.num_workers=1", "trainer.max_epochs=3", "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0", "logger=none", "checkpoint_every_n_steps=4", "threads=1",
        "~callbacks.progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def torch_threads_restored():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(module_tmp) -> Path:
    return module_tmp("resume_cache")


def config(folder: Path, cache: Path, extra: list[str] | None = None):
    return compose_config("train", folder / "out", cache, [*OVER, *(extra or [])])


def reference_run(folder: Path, cache: Path, extra: list[str] | None = None) -> dict:
    """A module fixture's never-stopped run, probed into ``folder/probe``. It leaves torch's thread count as it found
    it (``threads=1`` sets it; the function-scoped restore comes after module fixtures)."""
    threads = torch.get_num_threads()
    try:
        return run(config(folder, cache, extra), callbacks=[Probe(str(folder / "probe"))])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(module_tmp, cache) -> Path:
    """The reference: the same run, never stopped (in this process). Its probe folder."""
    folder = module_tmp("uninterrupted")
    assert reference_run(folder, cache)["global_step"] == 18
    return folder / "probe"


@pytest.fixture(scope="module")
def accumulated(module_tmp, cache) -> Path:
    """The reference of the gradient-accumulation tests: accumulate_grad_batches=2 (3 optimizer steps an epoch, 9 in
    all), never stopped. Its probe folder (validation and checkpoint settings do not change the weights it ends
    with: the uninterrupted run is the reference of runs that validate and save otherwise too)."""
    folder = module_tmp("accumulated")
    extra = ["checkpoint_every_n_steps=0", "trainer.accumulate_grad_batches=2"]
    assert reference_run(folder, cache, extra)["global_step"] == 9
    return folder / "probe"


def assert_trained_alike(reference: Path, resumed: Path, images: int, ranks: int = 1) -> float:
    """Same samples at every step with the same augmented pixels, each sample once an epoch, and the same final
    weights and buffers. Returns the largest weight difference."""
    ref, got = history(reference), history(resumed)
    assert [k for k in got if k not in ref] == [] and [k for k in ref if k not in got] == []
    for key in ref:
        assert (got[key]["epoch"], got[key]["names"]) == (ref[key]["epoch"], ref[key]["names"]), key
        assert got[key]["checksum"] == ref[key]["checksum"], f"{key}: other augmentation"
    for epoch, names in names_per_epoch(got).items():
        assert names == sorted(f"{i:06d}.jpg" for i in range(images)), f"epoch {epoch}: not every sample once"
    difference = max_difference(torch.load(reference / "final.pt"), torch.load(resumed / "final.pt"))
    print(f"\nlargest difference to the uninterrupted run's weights and buffers ({ranks} rank(s)): {difference:.3g}")
    assert difference <= TOLERANCE
    return difference


def test_loader_state_resumes_mid_epoch_and_after_a_finished_epoch(tmp_path):
    """The training loader alone (no trainer): its state after 2 batches gives a fresh loader the other 4 batches,
    pixels included (one worker), and a state taken after the epoch's last batch begins the next epoch."""
    from hydra.utils import instantiate

    cfg = compose_config("train", tmp_path / "out", tmp_path / "cache", [*TINY, "dataset.num_workers=1"])

    def loader(state=None):
        dm: GridBoxDataModule = instantiate(cfg.datamodule, _convert_="all")
        dm.setup("fit")
        dl = dm.train_dataloader()
        if state is not None:
            dl.load_state_dict(state)
        return dl

    def seen(batches):
        return [(b["path"], float(b["image"].double().sum())) for b in batches]

    dl = loader()
    epoch0 = []
    it = iter(dl)
    for _ in range(2):
        epoch0.append(next(it))
    mid = dl.state_dict()
    epoch0 += list(it)
    end = dl.state_dict()
    dl.sampler.set_epoch(1)  # what Lightning does before each epoch
    epoch1 = seen(dl)
    assert len(epoch0) == 6 and seen(epoch0) != epoch1
    assert seen(loader(mid)) == seen(epoch0)[2:]
    assert seen(loader(end)) == epoch1


def test_a_mid_epoch_loader_state_restored_with_another_worker_count_names_the_count(tmp_path):
    """step.ckpt saved by a loader with 1 worker, resumed with dataset.num_workers=0 (or 2): torchdata stopped the
    run with "State doesn't contain key '_snapshot' expected for multiprocess dataloader"."""
    from hydra.utils import instantiate

    def loader(workers):
        cfg = compose_config("train", tmp_path / "out", tmp_path / "cache", [*TINY, f"dataset.num_workers={workers}"])
        dm: GridBoxDataModule = instantiate(cfg.datamodule, _convert_="all")
        dm.setup("fit")
        return dm.train_dataloader()

    dl = loader(1)
    it = iter(dl)
    next(it), next(it)
    mid = dl.state_dict()
    for workers in (0, 2):
        with pytest.raises(ValueError, match=r"saved in the middle of epoch 0 by a training loader with "
                                             r"dataset.num_workers=1.*resume with dataset.num_workers=1"):
            loader(workers).load_state_dict(mid)
    loader(1).load_state_dict(mid)  # the same count: restored


@pytest.mark.slow
def test_sigkill_after_step_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, cache, uninterrupted):
    """``python -m gridface.train`` killed with SIGKILL (its whole process group, the loader worker too) right
    after step.ckpt at step 8, mid-epoch 2 of 3; the same command again resumes from it (ckpt_path=auto)."""
    out, probe = tmp_path / "out", tmp_path / "probe"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "gridface.train", *OVER, f"hydra.run.dir={out}", f"paths.cache_dir={cache}",
           "+callbacks.probe._target_=tests.resume_probe.Probe", f"+callbacks.probe.folder={probe}"]
    # stderr to a file: a pipe nobody reads while the run goes on fills and stalls it, and reading one to its end
    # waits for every process holding it (the loader worker too)
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        job = subprocess.Popen([*cmd, "+callbacks.probe.stall_at=8"], cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not (probe / "stalled").is_file():
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 8"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert job.returncode == -signal.SIGKILL
    step = torch.load(out / "checkpoints" / "step.ckpt", weights_only=False)
    assert step["global_step"] == 8 and step["loops"]["fit_loop"]["state_dict"]["combined_loader"]

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from"] == str(out / "checkpoints" / "step.ckpt") and result["global_step"] == 18
    assert_trained_alike(uninterrupted, probe, images=24)


class SendSignal(pl.Callback):
    """Sends this process ``signum`` at the start of the batch after step ``step``, or when the validation after
    step ``in_validation_at`` starts."""

    def __init__(self, signum: int, step: int | None = None, in_validation_at: int | None = None) -> None:
        self.signum, self.step, self.in_validation_at = signum, step, in_validation_at

    def on_train_batch_start(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_validation_start(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
        if not trainer.sanity_checking and trainer.global_step == self.in_validation_at:
            os.kill(os.getpid(), self.signum)


def stopped_by(signum: int, cfg, capsys, also: list[pl.Callback] | None = None, **when) -> str:  # noqa: ANN001
    """The train stage as ``python -m gridface.train`` runs it (:func:`user_errors` around ``run``, with ``also``'s
    callbacks), sent ``signum``: checks the exit status and the last line, returns the stage's stderr."""
    from gridface.utils.errors import user_errors

    status, word = {signal.SIGTERM: (143, "terminated"), signal.SIGINT: (130, "interrupted")}[signum]
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    # Ctrl-C as a terminal's python has it: a process started in the background of a script (`make test &`, some CI
    # runners) inherits SIGINT ignored, and the run never saw the signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stop:
            user_errors("train")(run)(cfg, callbacks=[SendSignal(signum, **when), *(also or [])])
    finally:  # Lightning ignores SIGINT once it has caught a Ctrl-C
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    err = capsys.readouterr().err
    assert stop.value.code == status and err.rstrip().splitlines()[-1] == f"gridface.train: {word}", err[-3000:]
    return err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_training_run_stopped_by_a_signal_says_so_and_exits_with_its_status(tmp_path, cache, capsys, signum):
    """Lightning ends fit on SIGTERM with its SIGTERMException, a SystemExit without a code: the terminated run
    exited 0 without a word, as a finished one does (a scheduler or script saw success), and kept only its last
    periodic checkpoint. It now saves preempted.ckpt at the end of the step it is in, exits 143, and the same command
    resumes from there. Ctrl-C exited 1 (now 130)."""
    out = tmp_path / "out"
    stopped_by(signum, config(tmp_path, cache), capsys, step=2)
    assert not (out / "result.json").exists()  # the run did not finish
    if signum == signal.SIGTERM:  # a resume from it: test_sigusr2_preemption_resumes_to_the_uninterrupted_weights
        saved = torch.load(out / "checkpoints" / "preempted.ckpt", weights_only=False)
        assert saved["global_step"] == 3 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert resolve_ckpt_path("auto", out) == str(out / "checkpoints" / "preempted.ckpt")
    else:
        assert not (out / "checkpoints" / "preempted.ckpt").exists()


@pytest.mark.slow
def test_sigterm_during_a_validation_stops_it_at_once(tmp_path, cache, capsys):
    """A SIGTERM noted for a save after the validation waited for the whole validation, which may outlast the
    grace period before SIGKILL (docker: 10 s). It now stops as Lightning does (at the validation's next batch)
    and the run resumes from its newest checkpoint (step.ckpt of step 4 here: the validation never ended)."""
    out = tmp_path / "out"
    cfg = config(tmp_path, cache, ["trainer.limit_val_batches=2"])
    stopped_by(signal.SIGTERM, cfg, capsys, in_validation_at=6)
    assert not (out / "checkpoints" / "preempted.ckpt").exists()
    assert resolve_ckpt_path("auto", out) == str(out / "checkpoints" / "step.ckpt")


class CountValidationBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_validation_batch_end(self, *args) -> None:  # noqa: ANN002
        self.batches += 1


@pytest.mark.slow
def test_sigterm_in_a_gradient_accumulation_before_a_validation_stops_that_validation_at_once(tmp_path, cache,
                                                                                              capsys):
    """accumulate_grad_batches=2 and val_check_interval=5: Lightning validates after batch 4, the first half of an
    accumulation. A SIGTERM during that batch waited for the accumulation's end, past the whole validation (2
    batches); it now stops it at its next batch, as after a step."""
    cfg = config(tmp_path, cache, ["trainer.accumulate_grad_batches=2", "trainer.val_check_interval=5",
                                   "trainer.limit_val_batches=2"])
    validated = CountValidationBatches()
    stopped_by(signal.SIGTERM, cfg, capsys, also=[validated], step=2)  # step 2 ends at batch 3: sent at batch 4
    assert validated.batches == 1
    assert not (tmp_path / "out" / "checkpoints" / "preempted.ckpt").exists()


@pytest.mark.slow
def test_sigusr2_preemption_resumes_to_the_uninterrupted_weights(tmp_path, cache, uninterrupted):
    """SIGUSR2 during step 9 (mid-epoch 2): preempted.ckpt at step 10, the job exits (submitit's handler), and
    the same run folder resumes from it."""
    from .test_cluster import SignalAtStep, submitit_stand_in

    probe = tmp_path / "probe"
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        with pytest.raises(SystemExit):
            run(config(tmp_path, cache), callbacks=[SignalAtStep(9), Probe(str(probe))])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    ckpts = tmp_path / "out" / "checkpoints"
    assert torch.load(ckpts / "preempted.ckpt", weights_only=False)["global_step"] == 10
    resumed = run(config(tmp_path, cache), callbacks=[Probe(str(probe))])
    assert resumed["resumed_from"] == str(ckpts / "preempted.ckpt") and resumed["global_step"] == 18
    assert_trained_alike(uninterrupted, probe, images=24)


class ValidatedEpochs(pl.Callback):
    """Appends each validated epoch to a file, across the runs of one job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.sanity_checking:
            with open(self.path, "a") as f:
                f.write(f"{trainer.current_epoch}\n")


@pytest.mark.slow
def test_preemptions_at_epoch_ends_resume_to_the_uninterrupted_weights(tmp_path, cache, uninterrupted):
    """SIGUSR2 during an epoch's last batch, twice (steps 6 and 12 of 6-step epochs): saved there, before the
    epoch's validation, a resume skipped that validation, and the second resume trained epoch 1 again (Lightning
    counted it as not started). Now saved after the validation, at the epoch's end."""
    from .test_cluster import SignalAtStep, submitit_stand_in

    probe, validated = tmp_path / "probe", tmp_path / "validated.txt"
    ckpts = tmp_path / "out" / "checkpoints"
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        for step in (5, 11):  # the signal lands in the next batch: steps 6 and 12, each its epoch's last
            with pytest.raises(SystemExit):
                run(config(tmp_path, cache), callbacks=[SignalAtStep(step), Probe(str(probe)),
                                                        ValidatedEpochs(validated)])
            assert torch.load(ckpts / "preempted.ckpt", weights_only=False)["global_step"] == step + 1
    finally:
        signal.signal(signal.SIGUSR2, previous)
    resumed = run(config(tmp_path, cache), callbacks=[Probe(str(probe)), ValidatedEpochs(validated)])
    assert resumed["resumed_from"] == str(ckpts / "preempted.ckpt") and resumed["global_step"] == 18
    assert validated.read_text().split() == ["0", "1", "2"]  # each epoch validated once
    assert_trained_alike(uninterrupted, probe, images=24)


@pytest.mark.slow
@pytest.mark.parametrize(("every", "stop", "ckpt", "step"), [
    (0, {"fail_at": 8}, "last.ckpt", 6),  # killed in epoch 2: the newest is last.ckpt, from epoch 1's validation
    (3, {"fail_at": 7}, "step.ckpt", 6),  # killed in epoch 1: step.ckpt of step 6, saved after epoch 0's validation
], ids=["last.ckpt-at-validation", "step.ckpt-at-an-epoch-end"])
def test_resume_from_an_epoch_end_checkpoint_trains_the_next_epoch_in_its_order(tmp_path, cache, uninterrupted,
                                                                               every, stop, ckpt, step):
    """Checkpoints whose loader had finished its epoch. Restored as they were, the next epoch came out empty (12 of
    18 steps) or, with a loader worker, in epoch 1's order (the worker draws indices before Lightning's
    set_epoch)."""
    probe = tmp_path / "probe"
    with pytest.raises(Interrupted):
        run(config(tmp_path, cache, [f"checkpoint_every_n_steps={every}"]), callbacks=[Probe(str(probe), **stop)])
    ckpts = tmp_path / "out" / "checkpoints"
    assert torch.load(ckpts / ckpt, weights_only=False)["global_step"] == step
    resumed = run(config(tmp_path, cache, [f"checkpoint_every_n_steps={every}"]), callbacks=[Probe(str(probe))])
    assert resumed["resumed_from"] == str(ckpts / ckpt) and resumed["global_step"] == 18
    assert_trained_alike(uninterrupted, probe, images=24)


@pytest.mark.slow
def test_kills_in_epoch_end_validations_after_step_checkpoints_resume_to_the_uninterrupted_weights(tmp_path, cache,
                                                                                                   uninterrupted):
    """step.ckpt every 3 steps of 6-step epochs, and the run killed in the validation after step 6, then after
    step 12. step.ckpt was saved at each epoch's last batch, before its validation: the resume skipped that
    validation, and the second one trained epoch 1 again (24 steps for 18). A step a validation follows is now saved
    after it: each kill resumes from step 3's (then 9's) and validates that epoch."""
    probe, validated = tmp_path / "probe", tmp_path / "validated.txt"
    ckpts = tmp_path / "out" / "checkpoints"
    sigterm = signal.getsignal(signal.SIGTERM)
    for step in (6, 12):
        with pytest.raises(Interrupted):
            run(config(tmp_path, cache, ["checkpoint_every_n_steps=3"]),
                callbacks=[Probe(str(probe), fail_in_validation_at=step), ValidatedEpochs(validated)])
        assert torch.load(ckpts / "step.ckpt", weights_only=False)["global_step"] == step - 3
    resumed = run(config(tmp_path, cache, ["checkpoint_every_n_steps=3"]),
                  callbacks=[Probe(str(probe)), ValidatedEpochs(validated)])
    assert resumed["resumed_from"] == str(ckpts / "step.ckpt") and resumed["global_step"] == 18
    assert validated.read_text().split() == ["0", "1", "2"]
    assert_trained_alike(uninterrupted, probe, images=24)
    # the runs' SIGTERM handlers are gone with them (a finished trainer's, left behind, swallowed a later SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == sigterm


@pytest.mark.slow
def test_a_step_checkpoint_before_a_mid_epoch_validation_is_saved_after_it(tmp_path, cache):
    """val_check_interval=3 (a validation after steps 3 and 6 of each epoch) with step.ckpt every 3 steps: the
    save waits for the validation and comes at the next step; killed after step 4, the run resumes from that
    mid-epoch checkpoint (whose resume to the uninterrupted weights is the SIGKILL test's)."""
    extra = ["checkpoint_every_n_steps=3", "trainer.val_check_interval=3"]
    with pytest.raises(Interrupted):
        run(config(tmp_path, cache, extra), callbacks=[Probe(str(tmp_path / "probe"), fail_at=4)])
    ckpts = tmp_path / "out" / "checkpoints"
    saved = torch.load(ckpts / "step.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and not saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    assert resolve_ckpt_path("auto", tmp_path / "out") == str(ckpts / "step.ckpt")


@pytest.mark.slow
def test_a_step_checkpoint_put_off_to_an_epochs_last_batch_waits_for_the_epochs_end(tmp_path, cache, uninterrupted):
    """val_check_interval=5 and step.ckpt every 5 steps of 6-step epochs: step 5's save, put off past its
    validation, came at step 6, the epoch's last batch, before the epoch's end; killed after steps 8 and 11, the
    runs trained 23 steps for 18. It now waits for the epoch's end, as a save at that batch does."""
    probe, ckpts = tmp_path / "probe", tmp_path / "out" / "checkpoints"
    extra = ["checkpoint_every_n_steps=5", "trainer.val_check_interval=5"]
    for step, saved in ((8, 6), (11, 10)):
        with pytest.raises(Interrupted):
            run(config(tmp_path, cache, extra), callbacks=[Probe(str(probe), fail_at=step)])
        assert torch.load(ckpts / "step.ckpt", weights_only=False)["global_step"] == saved
    resumed = run(config(tmp_path, cache, extra), callbacks=[Probe(str(probe))])
    assert resumed["global_step"] == 18
    assert_trained_alike(uninterrupted, probe, images=24)


class FailAtBatch(pl.Callback):
    """Stops a run (:class:`Interrupted`) at the start of batch ``batch_idx`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            raise Interrupted(f"simulated kill at the start of batch {batch_idx} of epoch {self.epoch}")


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "kills"), [
    # step 8's save, put off past the validation after batch 4 of epoch 2, came at batch 5, inside an accumulation
    (["trainer.val_check_interval=4"], [(2, 5)]),
    # a run resumed at step 2 (saved after batch 4) saved it again after batch 5, inside an accumulation
    ([], [(0, 4), (0, 5)]),
], ids=["put-off-past-a-validation", "after-a-resume"])
def test_a_step_checkpoint_is_never_saved_inside_a_gradient_accumulation(tmp_path, cache, accumulated, extra, kills):
    """accumulate_grad_batches=2 (3 optimizer steps an epoch), step.ckpt every 2 steps. A step.ckpt saved after the
    first batch of an accumulation holds none of its gradient: the run killed before the second and resumed from it
    stepped on the second batch's gradient alone. Each killed run here resumes from a checkpoint and ends with the
    uninterrupted run's weights."""
    extra = ["checkpoint_every_n_steps=2", "trainer.accumulate_grad_batches=2", *extra]
    for epoch, batch in kills:
        with pytest.raises(Interrupted):
            run(config(tmp_path, cache, extra), callbacks=[Probe(str(tmp_path / "probe")), FailAtBatch(epoch, batch)])
    resumed = run(config(tmp_path, cache, extra), callbacks=[Probe(str(tmp_path / "probe"))])
    assert resumed["resumed_from"] and resumed["global_step"] == 9
    final = [torch.load(folder / "final.pt") for folder in (accumulated, tmp_path / "probe")]
    assert max_difference(*final) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("at_batch", [2, 4], ids=["mid-epoch", "at-the-epochs-end"])
def test_a_preemption_inside_a_gradient_accumulation_saves_at_its_end(tmp_path, cache, accumulated, at_batch):
    """accumulate_grad_batches=2: SIGUSR2 during batch 5 (index 4), the first half of an accumulation, saved
    preempted.ckpt after it, without its gradient; the resumed run stepped on batch 6's alone. The save now waits
    for the accumulation's end (after index 3: mid-epoch; after index 5: the epoch's end, after its validation),
    and the resumed run ends with the uninterrupted run's weights."""
    from .test_cluster import submitit_stand_in

    class SignalAtBatch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if (trainer.current_epoch, batch_idx) == (0, at_batch):
                os.kill(os.getpid(), signal.SIGUSR2)

    extra = ["checkpoint_every_n_steps=0", "trainer.accumulate_grad_batches=2"]
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        with pytest.raises(SystemExit):
            run(config(tmp_path, cache, extra), callbacks=[Probe(str(tmp_path / "probe")), SignalAtBatch()])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    saved = torch.load(tmp_path / "out" / "checkpoints" / "preempted.ckpt", weights_only=False)
    assert saved["global_step"] == {2: 2, 4: 3}[at_batch]  # the step its accumulation ends with
    resumed = run(config(tmp_path, cache, extra), callbacks=[Probe(str(tmp_path / "probe"))])
    assert resumed["resumed_from"].endswith("preempted.ckpt") and resumed["global_step"] == 9
    final = [torch.load(folder / "final.pt") for folder in (accumulated, tmp_path / "probe")]
    assert max_difference(*final) <= TOLERANCE


class StopAtStep(pl.Callback):
    """What ``trainer.max_time`` does when its time is up (Lightning's Timer): ``should_stop`` after step N."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step == self.step:
            trainer.should_stop = True


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "newest"), [
    (["checkpoint_every_n_steps=0"], "last.ckpt"),
    # step 8's step.ckpt, put off past the validation after it, is saved at the cut-short epoch's end
    (["checkpoint_every_n_steps=2", "trainer.val_check_interval=2"], "step.ckpt"),
], ids=["last.ckpt", "put-off-step.ckpt"])
def test_a_run_stopped_inside_an_epoch_by_its_time_limit_resumes_inside_that_epoch(tmp_path, cache, uninterrupted,
                                                                                    extra, newest):
    """max_time (or max_steps) ends an epoch at step 8 of 6-step epochs: Lightning runs that epoch's end hooks as
    if it were whole, and a resume from its last.ckpt (or from a step.ckpt put off to that end) went on with epoch
    3: 4 steps and epoch 2's validation fewer than the uninterrupted run. It now finishes epoch 2 and ends with the
    uninterrupted run's weights."""
    probe = tmp_path / "probe"
    stopped = run(config(tmp_path, cache, extra), callbacks=[StopAtStep(8), Probe(str(probe))])
    assert stopped["global_step"] == 8
    resumed = run(config(tmp_path, cache, extra), callbacks=[Probe(str(probe))])
    assert resumed["resumed_from"].endswith(newest) and resumed["global_step"] == 18
    assert_trained_alike(uninterrupted, probe, images=24)


class SignalRankZeroAtStep(pl.Callback):
    """SIGUSR2 to rank 0's process alone after step N: the other rank must still save and stop at the same step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGUSR2)


@pytest.mark.slow
def test_two_rank_ddp_killed_then_preempted_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, cache):
    """2 CPU ranks (gloo, spawned), no loader workers: 24 images, 3 steps an epoch per rank, step.ckpt every 2
    steps. One run interrupted twice: killed (both ranks stop at the start of the batch after step 4, mid-epoch 2 of
    3) and resumed from step.ckpt; then preempted (SIGUSR2 reaches rank 0 alone during step 8, both ranks save
    preempted.ckpt at step 8, mid-epoch 3, and exit) and resumed again to the end."""
    ddp = ["trainer.strategy=ddp_spawn", "trainer.devices=2", "dataset.num_workers=0", "checkpoint_every_n_steps=2"]
    run(config(tmp_path / "plain", cache, ddp), callbacks=[Probe(str(tmp_path / "plain" / "probe"))])
    assert max(step for _, step in history(tmp_path / "plain" / "probe")) == 9  # (spawned ranks: no global_step here)

    folder, probe = tmp_path / "interrupted", tmp_path / "interrupted" / "probe"
    ckpts = folder / "out" / "checkpoints"
    with pytest.raises(Exception, match="simulated kill"):
        run(config(folder, cache, ddp), callbacks=[Probe(str(probe), fail_at=4)])
    assert torch.load(ckpts / "step.ckpt", weights_only=False)["global_step"] == 4
    with pytest.raises(Exception, match="exit code"):
        run(config(folder, cache, ddp), callbacks=[Probe(str(probe)), SignalRankZeroAtStep(7)])
    assert torch.load(ckpts / "preempted.ckpt", weights_only=False)["global_step"] == 8
    resumed = run(config(folder, cache, ddp), callbacks=[Probe(str(probe))])
    assert resumed["resumed_from"] == str(ckpts / "preempted.ckpt")
    assert_trained_alike(tmp_path / "plain" / "probe", probe, images=24, ranks=2)


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", ["stream", "thread"])
def test_preempted_run_through_the_device_prefetch_loader_resumes_exactly(tmp_path, cache, monkeypatch, prefetch):
    """The device data path as it runs on a GPU (dataset.decode=hybrid, batches built by DevicePrefetchLoader as
    Lightning fetches them: on the loop's thread, or in the build thread that hands Lightning pending batches),
    here on the CPU: Lightning trains through the wrapper (its length, sampler epochs and loader state are the
    loader's), and a run preempted mid-epoch resumes to the uninterrupted run's weights."""
    from gridface.data.prefetch import DevicePrefetchLoader

    from .test_cluster import SignalAtStep, submitit_stand_in

    monkeypatch.setattr(GridBoxDataModule, "cuda_device", property(lambda self: torch.device("cpu")))
    iterated, real_iter = [], DevicePrefetchLoader.__iter__
    monkeypatch.setattr(DevicePrefetchLoader, "__iter__", lambda self: iterated.append(self) or real_iter(self))
    hybrid = ["dataset.decode=hybrid", f"dataset.prefetch={prefetch}"]
    reference = run(config(tmp_path / "ref", cache, hybrid), callbacks=[Probe(str(tmp_path / "ref_probe"))])
    assert reference["global_step"] == 18 and iterated  # Lightning's loops read the wrapper
    assert all(wrapper.threaded == (prefetch == "thread") for wrapper in iterated)
    probe = tmp_path / "probe"
    previous = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        with pytest.raises(SystemExit):
            run(config(tmp_path, cache, hybrid), callbacks=[SignalAtStep(9), Probe(str(probe))])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    resumed = run(config(tmp_path, cache, hybrid), callbacks=[Probe(str(probe))])
    assert resumed["resumed_from"].endswith("preempted.ckpt") and resumed["global_step"] == 18
    assert_trained_alike(tmp_path / "ref_probe", probe, images=24)


class ScoredEpochs(pl.LightningModule):
    """Logs a given val/AP50 per epoch and records the (epoch, batch) it trains on: the training run's checkpoint
    callbacks without the detector."""

    def __init__(self, scores: list[float] | None = None) -> None:
        super().__init__()
        self.layer, self.scores, self.seen = torch.nn.Linear(2, 1), scores or [], []

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.append((self.current_epoch, batch_idx))
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        self.log("val/AP50", self.scores[self.current_epoch])

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_ckpt_holds_the_last_epoch_when_it_is_not_the_best(tmp_path):
    # Lightning 2.6's save_last wrote last.ckpt only with a new best: a resume from it repeated every later epoch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, TensorDataset

    from .helpers import compose_train

    cfg = compose_train(tmp_path)
    callbacks = [instantiate(cfg.callbacks[k]) for k in ("model_checkpoint", "last_checkpoint", "step_checkpoint")]
    data = DataLoader(TensorDataset(torch.rand(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(ScoredEpochs([0.5, 0.7, 0.4]), data, data)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", weights_only=False)["epoch"] == 1
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    from gridface.training.resume import last_checkpoint_path, resolve_ckpt_path

    assert last_checkpoint_path(trainer) == str(ckpts / "last.ckpt") == resolve_ckpt_path("auto", cfg.paths.output_dir)


def test_the_csv_log_keeps_the_earlier_rows_when_the_run_resumes(tmp_path):
    # Lightning's CSVLogger deleted metrics.csv when its folder held files: every resume lost the earlier epochs
    import csv

    from hydra.utils import instantiate

    from .helpers import compose_train

    cfg = compose_train(tmp_path, ["ckpt_path=null"])
    first = instantiate(cfg.logger.csv)
    for step in (1, 2, 3, 4):  # the interrupted run logged up to step 4; its checkpoint was at step 2
        first.log_metrics({"train/loss": 2.0 - step / 10, **({"val/AP50": 0.25} if step == 2 else {})}, step=step)
    first.save()

    def rows(logger):
        with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))

    resumed = instantiate(cfg.logger.csv, resume_from="checkpoints/step.ckpt")  # ckpt_path, as train.run resolves it
    resumed.log_metrics({"train/loss": 1.0, "lr": 0.1}, step=3)
    resumed.save()
    got = rows(resumed)
    assert [r["step"] for r in got] == ["1", "2", "3"]  # step 3 and 4 of the interrupted run are logged again
    assert got[1]["val/AP50"] == "0.25" and got[2]["lr"] == "0.1" and got[2]["train/loss"] == "1.0"
    afresh = instantiate(cfg.logger.csv)  # a new run in the same folder: the old log is kept aside, not appended to
    afresh.log_metrics({"train/loss": 3.0}, step=1)
    afresh.save()
    assert [r["train/loss"] for r in rows(afresh)] == ["3.0"]
    assert (Path(afresh.log_dir) / "metrics.previous.csv").is_file()


@pytest.mark.parametrize(("limits", "step"), [({"max_steps": 3}, 3),  # ends inside epoch 1, before its validation
                                             ({"max_epochs": 3, "check_val_every_n_epoch": 2}, 6)])
def test_last_ckpt_holds_the_final_step_when_no_validation_followed_it(tmp_path, limits, step):
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, TensorDataset

    from .helpers import compose_train

    cfg = compose_train(tmp_path)
    callbacks = [instantiate(cfg.callbacks[k]) for k in ("model_checkpoint", "last_checkpoint")]
    data = DataLoader(TensorDataset(torch.rand(4, 2)), batch_size=2)
    trainer = pl.Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         **limits)
    trainer.fit(ScoredEpochs([0.5, 0.7, 0.4]), data, data)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == trainer.global_step == step


def test_a_run_extended_from_its_max_steps_stop_goes_on_inside_the_epoch(tmp_path):
    # last.ckpt written at train end, inside an epoch: extending max_steps must not skip the rest of that epoch
    from torch.utils.data import DataLoader, TensorDataset

    from gridface.training.resume import LastCheckpoint

    data = DataLoader(TensorDataset(torch.rand(8, 2)), batch_size=2)  # 4 batches an epoch
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path}
    first = ScoredEpochs()  # trained without a validation loader
    pl.Trainer(max_steps=6, callbacks=[LastCheckpoint(str(tmp_path))], **quiet).fit(first, data)
    assert first.seen[-1] == (1, 1) and torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6
    extended = ScoredEpochs()
    pl.Trainer(max_steps=12, **quiet).fit(extended, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert extended.seen == [(1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
