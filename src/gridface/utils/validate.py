"""Config values out of range stop a stage before any heavy work, with the key, the value and what is allowed: the
error and the generic checks. The stages' own rules (dataset, post-processing, evaluation) are in
:mod:`gridface.stages.checks`."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        allowed = " and ".join(s for s in (lo, hi) if s)
        raise ConfigError(f"{key} = {value!r}: must be {'a whole number' if integer else 'a number'}"
                          f"{' ' + allowed if allowed else ''}")


def whole_number(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``low``, else argparse's one-line usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number >= {low}")
        return value

    return parse


def check_writable(key: str, folder: str | Path) -> None:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise ConfigError(f"{key} = '{folder}': this folder cannot be written ({e.strerror or e}); give a "
                          "writable folder") from None
