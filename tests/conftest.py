import faulthandler
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist (``make test``), each worker gets its share of the cores, set before torch is imported
    (and inherited by the runs the tests start): two workers of two threads each on 2 cores took 1.5x as long as two
    of one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


_share_the_cores_among_workers()

# beside the checkout (dev and CI machines), or where GRIDFACE_SHARED_DATA points (a GPU machine's copy)
SHARED_DATA = Path(os.environ.get("GRIDFACE_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(autouse=True)
def lightning_rank_restored():
    """A Trainer built under a simulated multi-rank environment (the Slurm test's rank 5) sets Lightning's global
    ``rank_zero_only.rank``, and a later single-process Trainer does not reset it: every in-process run after it
    would skip its rank-zero work (loggers, metrics, checkpoints). Each test leaves the rank as it found it."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", 0)
    yield
    rank_zero_only.rank = rank


STDERR_FD = pytest.StashKey[int]()
TIMEOUT = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    # the terminal's stderr, kept before pytest captures fd 2 around each test (a dump into the capture is lost with
    # the process); an xdist worker's is its controller's, so the stacks reach the run's output
    config.stash[STDERR_FD] = os.dup(2)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> None:  # noqa: ANN001
    """pytest-timeout's limit for this test as it resolved it (``--timeout``, ``PYTEST_TIMEOUT``, the ini, a marker);
    returning None leaves its own timer to it."""
    item.stash[TIMEOUT] = float(settings.timeout)


@contextmanager
def stuck_test_watchdog(item: pytest.Item) -> Iterator[None]:
    """A test phase still running 60 s after pytest-timeout's limit is stuck in C code, where the SIGALRM never
    reaches Python (or pytest-timeout's timer is gone: a failed phase cancels it): faulthandler prints every thread's
    stack and ends the process. Under xdist the test is reported as its worker's crash and a new worker goes on
    (``make test`` allows one), so CI ends naming the test instead of sitting at its limit (it held CI for 90 minutes
    once, naming nothing). Not armed without a limit or under a debugger (a trace function is set)."""
    limit = item.stash.get(TIMEOUT, 0.0)
    armed = limit > 0 and sys.gettrace() is None
    if armed:
        faulthandler.dump_traceback_later(limit + 60, exit=True, file=item.config.stash[STDERR_FD])
    try:
        yield
    finally:
        if armed:
            faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with stuck_test_watchdog(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with stuck_test_watchdog(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with stuck_test_watchdog(item):
        return (yield)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real WIDER FACE material beside the repo; tests skip where it is absent."""
    if not (SHARED_DATA / "widerface").is_dir():
        pytest.skip(f"real WIDER FACE test data not found at {SHARED_DATA} (present only on dev/CI machines)")
    return SHARED_DATA


def pytest_report_header(config) -> list[str]:
    """The free space where the tests write: a full run keeps ~1 GB at a time, and a disk that fills mid-run fails
    tests with ``No space left on device`` far from their cause."""
    folder = Path(config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    folder = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    return [f"gridface: {shutil.disk_usage(folder).free / 2**30:.1f} GiB free in {folder}", inherited_signals()]


def inherited_signals() -> str:
    """Signals this process started with ignored or blocked: a test process started in a script's background has
    SIGINT ignored, and a runner may block or ignore others; the signal tests' behaviour depends on them."""
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2, signal.SIGALRM)
    ignored = [s.name for s in watched if signal.getsignal(s) == signal.SIG_IGN]
    blocked = sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    return f"gridface: signals ignored: {', '.join(ignored) or 'none'}; blocked: {', '.join(blocked) or 'none'}"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Callable[[str], Path]]:
    """``tmp_path_factory.mktemp`` for a test file's shared fixtures, whose folders go when the file's tests have
    all passed. A file's checkpoints are ~130 MB each (ResNet18 and its optimizer state): kept to the end of the
    session, one full run left 11-14 GB in /tmp and filled CI's disk. As ``tmp_path_retention_policy = "failed"``
    does for ``tmp_path``, the folders of a file with a failure stay to be looked at."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> tuple[Path, str, float]:
    """One run of ``gridface.pipeline experiment=pipeline_smoke`` (GRIDFACE_ROOT, stdout, seconds), shared by the
    pipeline and notebook tests: the notebook's own pipeline cell is then a rerun that finds every stage done."""
    from .helpers import run_smoke_pipeline

    root = tmp_path_factory.mktemp("pipeline_root")
    stdout, seconds = run_smoke_pipeline(root)
    return root, stdout, seconds
