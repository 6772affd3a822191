"""Command-line spellings that changed: the old ones keep working for one release, with a message naming the new.

Every stage names its input model ``model=`` (gridface 0.2). Hydra refuses keys a config does not have, so the
rename happens on ``sys.argv`` before Hydra parses it.
"""

from __future__ import annotations

import sys

# old key -> new key; a key ending in "." renames every key under it
STAGE_RENAMES: dict[str, dict[str, str]] = {
    "train": {"model.init_from": "model", "model.": "network."},
    "prune": {"checkpoint": "model"},
    "export": {"checkpoint": "model"},
}


def rename_argument(arg: str, renames: dict[str, str]) -> str | None:
    """The new spelling of one ``key=value`` override, or None when it is current."""
    if "=" not in arg or arg.startswith("-"):
        return None
    key, value = arg.split("=", 1)
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    bare = key[len(prefix):]
    for old, new in renames.items():
        if bare == old:
            return f"{prefix}{new}={value}"
        if old.endswith(".") and bare.startswith(old):
            return f"{prefix}{new}{bare[len(old):]}={value}"
    return None


def rename_legacy_arguments(stage: str, argv: list[str] | None = None) -> list[str]:
    """Rewrite ``argv`` (default ``sys.argv``) in place, printing one deprecation line per renamed argument."""
    argv = sys.argv if argv is None else argv
    renames = STAGE_RENAMES.get(stage, {})
    for i, arg in enumerate(argv[1:], start=1):
        new = rename_argument(arg, renames)
        if new is not None:
            print(f"gridface.{stage}: '{arg.split('=', 1)[0]}=' is deprecated, use '{new.split('=', 1)[0]}=' "
                  "(the same name in every stage); the old name goes in gridface 0.3", file=sys.stderr)
            argv[i] = new
    return argv
