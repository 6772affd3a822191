"""``python -m gridface.<stage> --help`` says what that stage takes: its own keys (``model=``, ``source=``,
``output_dir=``, ...) one line each, and the config groups it composes from, none of another stage's. The text is
each stage's ``hydra.help.template`` (configs/<stage>.yaml); these tests keep it in step with the config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from gridface.utils.hydra import config_dir

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["train", "prune", "export", "evaluate", "infer", "pipeline", "tune", "check_data"]
ALL_GROUPS = {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}
INTERNAL = {"task_name", "defaults", "hydra", "module", "datamodule", "evaluation"}  # wiring, not user keys


def composed(stage: str) -> tuple[str, set[str]]:
    """The stage's help text and every group its composed config chose from (the recipe's too)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(stage, return_hydra_config=True)
    return cfg.hydra.help.template, {k.split("/")[0].split("@")[0] for k in cfg.hydra.runtime.choices}


def own_keys(stage: str) -> list[str]:
    """The keys configs/<stage>.yaml itself sets (leaves and sections a user sets, e.g. postprocess.<key>=)."""
    node = OmegaConf.load(Path(config_dir()) / f"{stage}.yaml")
    keys = []
    for key, value in node.items():
        if key in INTERNAL or key in ALL_GROUPS:
            continue
        if isinstance(value, DictConfig):
            keys += [f"{key}.{k}" for k in value] if stage == "tune" and key == "tune" else [f"{key}.<key>"]
        else:
            keys.append(key)
    return keys


def own_groups(stage: str) -> set[str]:
    """The groups the stage's defaults list chooses (``prune@pipeline.prune`` is the prune group)."""
    entries = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / f"{stage}.yaml")).get("defaults", [])
    groups = {re.sub(r"^override ", "", next(iter(e))).split("@")[0] for e in entries if isinstance(e, dict)}
    if "train" in entries:  # pipeline, tune: a training config and more
        groups |= own_groups("train")
    return groups


@pytest.mark.parametrize("stage", STAGES)
def test_help_names_the_stages_own_keys_and_groups(stage):
    text, used = composed(stage)
    assert text.startswith(f"== gridface.{stage} ==") and f"python -m gridface.{stage}" in text
    for key in own_keys(stage):
        bare = key.removesuffix(".<key>")
        assert f"{bare}=" in text or f"{bare}." in text, f"{stage}: {key}= is not in its --help"
    groups_line = text[text.index("Groups"):]
    named = {g for g in ALL_GROUPS if re.search(rf"\b{g}\b", groups_line)}
    assert own_groups(stage) - {"experiment", "debug"} <= named | {"experiment", "debug"}, own_groups(stage) - named
    assert named <= used, f"{stage} --help names groups it does not use: {named - used}"


def test_infer_help_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "gridface.infer", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    for key in ("model=", "source=", "output_dir=", "postprocess.<key>="):
        assert sum(line.lstrip().startswith(key) for line in lines) == 1, key
    assert not re.search(r"\b(trainer|network|augment|optimizer)\b", done.stdout)  # no training groups
