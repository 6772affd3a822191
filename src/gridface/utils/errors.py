"""A user's mistake reads as one clear message, not as the last line of a traceback.

Every ``@hydra.main`` entry point wraps its body in :func:`user_errors`: a bad value, a missing file or a
malformed label (``ValueError``, ``OSError`` and their kinds) prints ``error: <message>`` and exits with status 2.
``HYDRA_FULL_ERROR=1`` re-raises, with the whole trace, as Hydra does for its own errors.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(stage: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"gridface.{stage}: error: {e}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
                sys.exit(2)
        return wrapper  # type: ignore[return-value]
    return wrap
