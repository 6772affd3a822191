"""A user's mistake reads as one clear message, not as the last line of a traceback.

Every ``@hydra.main`` entry point wraps its body in :func:`user_errors`: a bad value, a missing file or a malformed
label (``ValueError``, ``OSError`` and their kinds, Lightning's ``MisconfigurationException``), a missing optional
dependency (:class:`MissingDependency`, from :func:`optional_import`) prints ``gridface.<stage>: error: <message>``
and exits with status 2, also when Hydra's ``instantiate`` wrapped the error. Hydra creates the run folder before the
stage starts, so :class:`RunDirCheck` (a Hydra callback, ``configs/hydra/default.yaml``) answers an unwritable
``hydra.run.dir`` the same way. ``HYDRA_FULL_ERROR=1`` re-raises, with the whole trace, as Hydra does for its own
errors.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback

from gridface.utils.hydra import make_run_dir, make_sweep_dir

F = TypeVar("F", bound=Callable[..., Any])


class MissingDependency(ImportError, RuntimeError):
    """An optional package (TensorRT, Optuna, submitit, ...) a command needs is not installed, or its hardware is
    absent. A RuntimeError too, so callers that record a skipped step (the pipeline's engines) keep catching it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, systemd) raised as an interrupt inside
    :func:`terminate_as_interrupt`: the stage stops as on Ctrl-C, closing and keeping what it wrote."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while inside (Python's default is to die at once,
    leaving an open video unplayable); elsewhere, and afterwards, the handler is what it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SubmittedJobError(RuntimeError):
    """A user's mistake inside a submitit job, raised (not an exit) so that submitit records it as the job's result
    and the command that submitted the job reports it."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError)


def optional_import(module: str, needed_for: str, install: str) -> Any:
    """``import module``, or a :class:`MissingDependency` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{needed_for} needs the '{module.split('.')[0]}' package, which is not installed "
                                f"here: {install}") from e


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def user_error(error: BaseException) -> BaseException | None:
    """The user's mistake behind ``error``: itself, or the cause Hydra's ``instantiate`` wrapped; None for a bug."""
    if isinstance(error, USER_ERRORS):
        return error
    if type(error).__name__ == "MisconfigurationException":  # Lightning's word for a wrong trainer.* value
        return error
    if type(error).__name__ == "InstantiationException" and error.__cause__ is not None:
        return user_error(error.__cause__)
    return None


def report(stage: str, message: Any, prog: str | None = None) -> None:
    """Print the one line (and how to see more) and exit with status 2."""
    print(f"{prog or f'gridface.{stage}'}: error: {message}\n(HYDRA_FULL_ERROR=1 shows the traceback)",
          file=sys.stderr)
    sys.exit(2)


def user_errors(stage: str, prog: str | None = None) -> Callable[[F], F]:
    """``fn`` with a user's mistake as one line ``<prog>: error: ...`` (exit 2) and Ctrl-C / SIGTERM as one line
    (exit 130 / 143), also when Lightning caught them first; ``prog`` is ``gridface.<stage>`` unless given (a
    script's name)."""
    name = prog or f"gridface.{stage}"

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as e:  # Ctrl-C: what was written stays (each stage writes atomically)
                if full_error():
                    raise
                stopped_by_signal(name, terminated=isinstance(e, Terminated))
            except SystemExit as e:
                terminated = type(e).__name__ == "SIGTERMException"
                if not (terminated or lightning_interrupt(e)) or os.environ.get("SUBMITIT_FOLDER"):
                    raise  # (HYDRA_FULL_ERROR=1 has no traceback to show here: the status still says the signal)
                stopped_by_signal(name, terminated)
            except Exception as e:
                mistake = user_error(e)
                if mistake is None or full_error():
                    raise
                if os.environ.get("SUBMITIT_FOLDER"):  # a Slurm job of Hydra's submitit launcher
                    # an exit writes no result for submitit to read, and without Slurm accounting the launcher
                    # waited for one for ever: the error is the job's result, and the sweep's command says it
                    print(f"{name}: error: {mistake}", file=sys.stderr)
                    raise SubmittedJobError(f"{name}: error: {mistake}") from None
                report(stage, mistake, name)
        return wrapper  # type: ignore[return-value]
    return wrap


def lightning_interrupt(stop: SystemExit) -> bool:
    """Lightning's ``trainer.fit`` answers Ctrl-C with ``sys.exit(1)`` inside its ``except KeyboardInterrupt``."""
    return stop.code == 1 and isinstance(stop.__context__, KeyboardInterrupt)


def stopped_by_signal(name: str, terminated: bool) -> None:
    """One line and the shell's status for a stop by a signal: 130 for Ctrl-C, 143 for SIGTERM. Lightning raises its
    ``SIGTERMException`` at the next step after SIGTERM, a SystemExit without a code: a terminated training run
    exited 0, as if it had finished."""
    print(f"{name}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def script_errors(main: Callable[[], Any]) -> Any:
    """Runs a script's ``main`` (``scripts/``) as :func:`user_errors` runs a stage: a missing file or a bad value
    is one line naming the script, not a traceback."""
    return user_errors("", prog=Path(sys.argv[0]).name)(main)()


def unwritable_folder(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created and written (its nearest existing parent is a file, or a folder in which
    nothing can be made), or None. Tried, not inferred from permission bits: root passes every access() check, yet
    cannot create folders under /proc or on a read-only mount. Nothing is left behind: Hydra makes the folder itself,
    a moment later."""
    path = Path(folder).expanduser().absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"'{parent}' is a file, not a folder"
            try:
                Path(tempfile.mkdtemp(prefix=".gridface-write-test.", dir=parent)).rmdir()
            except OSError as e:
                return f"nothing can be created in '{parent}' ({e.strerror or e})"
            return None
    return None


class RunDirCheck(Callback):
    """Hydra callback: makes a new run's or sweep's folder (:func:`gridface.utils.hydra.make_run_dir`,
    :func:`~gridface.utils.hydra.make_sweep_dir`); an unwritable ``hydra.run.dir`` / ``hydra.sweep.dir`` is one
    line, before Hydra's traceback."""

    def _check(self, config: Any, key: str) -> None:
        from omegaconf import OmegaConf

        folder = OmegaConf.select(config, f"hydra.{key}.dir", throw_on_resolution_failure=False)
        why = unwritable_folder(folder) if folder and not full_error() else None
        if why:
            stage = OmegaConf.select(config, "task_name", default=None) or "run"
            report(stage, f"hydra.{key}.dir = '{folder}': this run folder cannot be created ({why}); give a "
                          f"writable folder with hydra.{key}.dir=<folder>")

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        make_run_dir(config)  # a run folder of its own, before anything reads the name
        self._check(config, "run")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        make_sweep_dir(config)  # a sweep folder of its own, before the sweeper and launcher read the name
        self._check(config, "sweep")
