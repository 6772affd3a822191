"""The README is executable truth: every command and Python snippet of its code blocks is checked as written.

Policy (the README's "Tests" section says the same):

- Every ``bash`` and ``python`` block is read; continuation lines are joined, full-line comments skipped, ``VAR=value``
  lines applied. Only the documented placeholders of :data:`PLACEHOLDERS` are replaced (tiny synthetic WIDER FACE
  and KITTI layouts, the shared mini_val, the artifacts of the smoke pipeline, which is itself a README command).
- **Every** ``gridface`` command is *composed* in-process, as its entry point would compose it (Hydra's own override
  parser, the same config search path; a ``-m`` sweep once per value), resolved, and passed through the stage's
  config checks (:func:`gridface.stages.checks.check_stage_config`: dataset, model file, post-processing ...).
  ``make`` targets must exist in the Makefile (their gridface command is composed too), shell scripts must parse
  (``bash -n``), ``pip install`` names must be installed distributions, ``python`` without ``.venv/bin/`` only
  appears where the block installs a fresh environment.
- The commands of :data:`REAL` (and the Python snippet) also *run* for real, as subprocesses from the checkout,
  with the one documented override :data:`SHORTEN` appended to a training command; each must exit 0. Training
  itself runs in the smoke pipeline, a README command run as written.
- A command marked ``# needs: gpu``, ``tensorrt`` or ``cluster`` (a trailing comment on one of its lines) is never
  run: composed only. The marks are checked both ways: an unmarked training command must compose to a trainer this
  CPU machine runs, a Slurm launcher or ``sbatch`` must be marked ``cluster``, a TensorRT export ``tensorrt``.

The test prints the list of commands with how each was checked (``pytest -s``). It is ``slow``: it shares the
session's smoke pipeline (``smoke_pipeline`` fixture) and adds the real runs, about 30-40 s on a 2-core CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHORTEN = "debug=fdr"  # appended to a training command that runs for real (Lightning's fast_dev_run, on the CPU)
NEEDS = re.compile(r"needs:\s*([a-z]+(?:\s*,\s*[a-z]+)*)")
# commands run for real (a substring of the command as written, each naming one README command)
REAL = (
    "gridface.pipeline experiment=pipeline_smoke",  # run by the smoke_pipeline fixture, exactly as written
    "gridface.check_data dataset=widerface splits=[val]",
    "gridface.evaluate model=outputs/train/runs/<run>/checkpoints/best.ckpt",
    "gridface.evaluate predictions=",
    "gridface.infer model=model.onnx source=photos/",
)


@dataclass
class Command:
    line: int  # README line where the command starts
    text: str  # as written (continuations joined, trailing comment removed)
    needs: set[str] = field(default_factory=set)
    block: str = ""  # the whole block (pip-installed environments may say plain ``python``)
    env: dict[str, str] = field(default_factory=dict)  # VAR=value lines above it in the block


def strip_comment(line: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a # inside quotes stays."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:]
    return line.rstrip(), ""


def readme_blocks() -> list[tuple[int, str, str]]:
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def readme_commands() -> tuple[list[Command], list[tuple[int, str]]]:
    """The shell commands and the Python snippets of the README's code blocks."""
    commands, snippets = [], []
    for start, lang, body in readme_blocks():
        if lang == "python":
            snippets.append((start, body))
            continue
        if lang != "bash":
            continue  # folder layouts and the source tree
        env: dict[str, str] = {}
        pending, pending_line, notes = "", 0, ""
        for i, raw in enumerate(body.splitlines()):
            code, comment = strip_comment(raw)
            if not code.strip():
                continue
            if not pending:
                pending_line, notes = start + i, ""
            notes += " " + comment
            if code.endswith("\\"):
                pending += code[:-1].strip() + " "
                continue
            text, pending = pending + code.strip(), ""
            if re.fullmatch(r"[A-Z_]+=\S+", text):
                key, value = text.split("=", 1)
                env[key] = value
                continue
            needs = {n.strip() for m in NEEDS.finditer(notes) for n in m.group(1).split(",")}
            commands.append(Command(pending_line, text, needs, body, dict(env)))
    return commands, snippets


# ------------------------------------------------------------------------------------------------ placeholders
def write_layouts(tmp: Path, photo: Path) -> dict[str, Path]:
    """Tiny WIDER FACE and KITTI layouts (one real photo each) for the README's data folders."""
    wider = tmp / "widerface"
    for split in ("train", "val"):
        img = wider / f"WIDER_{split}" / "images" / "0--Parade" / "0_Parade_1.jpg"
        img.parent.mkdir(parents=True)
        img.write_bytes(photo.read_bytes())
        gt = wider / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        gt.parent.mkdir(parents=True, exist_ok=True)
        gt.write_text("0--Parade/0_Parade_1.jpg\n1\n100 100 80 100 0 0 0 0 0 0\n")
    kitti = tmp / "kitti"
    for split in ("train", "val"):
        (kitti / split / "images").mkdir(parents=True)
        (kitti / split / "labels").mkdir(parents=True)
        (kitti / split / "images" / "a.jpg").write_bytes(photo.read_bytes())
        (kitti / split / "labels" / "a.txt").write_text("face 0 0 0 100 100 180 200 0 0 0 0 0 0 0\n")
    return {"wider": wider, "kitti": kitti}


def placeholders(tmp: Path, smoke: Path, shared: Path) -> dict[str, str]:
    """README placeholder -> what the test puts there (longest first, so no placeholder eats another)."""
    run = smoke / "outputs" / "pipeline" / "smoke"
    mini = shared / "widerface" / "mini_val"
    photos = tmp / "photos"
    photos.mkdir()
    for p in sorted((mini / "images").rglob("*.jpg"))[:2]:
        (photos / p.name).write_bytes(p.read_bytes())
    layouts = write_layouts(tmp, next(photos.iterdir()))
    tune = tmp / "tune_gridface"
    (tune / "experiment").mkdir(parents=True)
    from gridface.tune import best_experiment

    (tune / "experiment" / "best.yaml").write_text(best_experiment({"optimizer.max_lr": 0.002}, 0.9, "val/AP50", 3))
    studies = tmp / "studies"
    studies.mkdir()
    table = {
        ".venv/bin/python": sys.executable,
        "../shared/data": str(shared),
        "/path/to/widerface": str(layouts["wider"]),
        "/data/widerface": str(layouts["wider"]),
        "/data/faces": str(layouts["kitti"]),
        "/path/to/resnet18-f37072fd.pth": str(tmp / "resnet18-f37072fd.pth"),
        "outputs/train/runs/<run>/checkpoints/best.ckpt": str(run / "train" / "checkpoints" / "best.ckpt"),
        "<trained.ckpt>": str(run / "train" / "checkpoints" / "best.ckpt"),
        "<pruned.ckpt>": str(run / "prune" / "pruned.ckpt"),
        "<.ckpt>": str(run / "retrain" / "checkpoints" / "best.ckpt"),
        "model_int8.onnx": str(next((run / "export_int8").glob("*_int8.onnx"))),
        "model.onnx": str(next((run / "export_fp32").glob("*.onnx"))),
        "photos/": str(photos),
        "photo.jpg": str(next(photos.iterdir())),
        "/path/to/eval_tools/ground_truth": str(mini / "ground_truth"),
        "/path/to/preds": str(shared / "widerface" / "preds_yolov7face"),
        "outputs/prune_sweep": str(run / "prune"),
        "outputs/tune/gridface": str(tune),
        "/shared/studies": str(studies),
        "<acct>": "acct",
    }
    return dict(sorted(table.items(), key=lambda kv: -len(kv[0])))


def substitute(text: str, table: dict[str, str], env: dict[str, str]) -> str:
    for key, value in env.items():
        text = text.replace(f"${key}", value)
    text = re.sub("|".join(map(re.escape, table)), lambda m: table[m.group(0)], text)  # one pass, longest first
    assert not re.search(r"<[a-z.]+>", text.replace("<event>", "")), f"an undocumented placeholder is left: {text}"
    return text


# ------------------------------------------------------------------------------------------------ composition
def compose_stage(stage: str, args: list[str], workdir: Path) -> list[str]:
    """Compose ``python -m gridface.<stage> <args>`` as its entry point would (a ``-m`` sweep once per value),
    resolve it and run the stage's config checks; what was composed, one line per config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gridface.stages.checks import check_stage_config
    from gridface.utils.cli import rename_legacy_arguments
    from gridface.utils.hydra import config_dir

    args = rename_legacy_arguments(stage, ["prog", *args])[1:]
    overrides, multirun, i = [], False, 0
    while i < len(args):
        if args[i] in ("-m", "--multirun"):
            multirun = True
        elif args[i] == "--config-dir":
            overrides.append(f"hydra.searchpath=[file://{Path(args[i + 1]).resolve()}]")
            i += 1
        elif args[i].startswith("-"):
            raise AssertionError(f"flag {args[i]} is not checked by this test; add it")
        else:
            overrides.append(args[i])
        i += 1
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [(n, o) for n, o in enumerate(parsed) if o.is_sweep_override()]
    assert multirun or not sweeps, f"a sweep without -m: {[o.input_line for _, o in sweeps]}"
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else line
             for o, line in zip(parsed, overrides, strict=True)]
    variants = [[*first[:n], f"{o.get_key_element()}={v}", *first[n + 1:]]  # each value once, other sweeps first
                for n, o in sweeps for v in o.sweep_string_iterator()] or [overrides]
    done = []
    for variant in variants:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(stage, overrides=variant, return_hydra_config=True)
        launcher = cfg.hydra.launcher
        OmegaConf.to_container(launcher, resolve=True)  # the launcher's keys resolve against the job's config
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(workdir / "compose")
        if cfg.get("dataset") is not None:  # without a dataset (prune, export) the stage reads the model's own
            OmegaConf.to_container(cfg, resolve=True)
        check_stage_config(cfg)
        done.append(cfg)
    return done


def gridface_command(text: str) -> tuple[str, list[str]] | None:
    """``<python> -m gridface.<module> args`` -> (module, args)."""
    words = shlex.split(text)
    if len(words) >= 3 and words[1] == "-m" and words[2].startswith("gridface."):
        return words[2].removeprefix("gridface."), words[3:]
    return None


def make_target(target: str) -> str:
    """The Makefile recipe of ``target`` (its first line), or a failure naming it."""
    found = re.search(rf"^{re.escape(target)}:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, f"make {target}: no such Makefile target"
    return found.group(1)


def run_real(argv: list[str] | str, env: dict[str, str], timeout: int = 300) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(argv, str))
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ the test
def test_readme_marks_and_placeholders_are_readable():
    """Fast: the README parses into commands, each marked command names known needs, and the Python snippets and
    REAL entries all name something the README holds."""
    commands, snippets = readme_commands()
    assert len(commands) > 20 and snippets
    assert all(c.needs <= {"gpu", "tensorrt", "cluster"} for c in commands), [c.needs for c in commands]
    for real in REAL:
        assert sum(real in c.text for c in commands) == 1, f"REAL entry {real!r} names no single README command"


@pytest.mark.slow
def test_every_readme_command_runs_or_composes(tmp_path, smoke_pipeline, shared_data, capsys):
    import importlib.metadata as md

    from gridface.accelerator import wants_gpu

    smoke_root, _, smoke_seconds = smoke_pipeline
    table = placeholders(tmp_path, smoke_root, shared_data)
    env = {**os.environ, "GRIDFACE_ROOT": str(tmp_path / "root"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    commands, snippets = readme_commands()
    report: list[str] = []
    gpu_here = __import__("torch").cuda.is_available()
    for c in commands:
        text = substitute(c.text, table, c.env)
        how = "composed"
        if c.text.startswith("python ") or c.text.startswith("pip "):
            assert "pip install" in c.block, f"README l.{c.line}: bare python outside a fresh environment: {c.text}"
        if c.text.startswith("pip install"):
            names = [w for w in shlex.split(re.sub(r"<[^>]*>", "", c.text))[2:] if not w.startswith("-")]
            for name in names:
                md.version(name)  # raises PackageNotFoundError for a name that is no distribution
            report.append(f"l.{c.line} checked (installed distributions): {c.text}")
            continue
        if c.text.startswith("make "):
            recipe = make_target(c.text.split()[1])
            cmd = gridface_command(recipe.replace("$(PY)", sys.executable).replace("$(ARGS)", ""))
            if cmd:
                compose_stage(*cmd, tmp_path)
            report.append(f"l.{c.line} checked (Makefile target{', its command composed' if cmd else ''}): {c.text}")
            continue
        if c.text.startswith("sbatch ") or c.text.split()[0].endswith(".sh"):
            words = shlex.split(text)
            script = ROOT / words[1 if words[0] == "sbatch" else 0]
            assert script.is_file(), f"README l.{c.line}: {script} does not exist"
            subprocess.run(["bash", "-n", str(script)], check=True)
            if words[0] == "sbatch":
                assert "cluster" in c.needs, f"README l.{c.line}: sbatch needs a '# needs: cluster' mark"
                compose_stage("train", words[2:], tmp_path)
            report.append(f"l.{c.line} checked (script parses{', overrides composed' if words[0] == 'sbatch' else ''})"
                          f"{' [needs: ' + ', '.join(sorted(c.needs)) + ']' if c.needs else ''}: {c.text}")
            continue
        cmd = gridface_command(text)
        assert cmd, f"README l.{c.line}: a command this test does not know how to check: {c.text}"
        module, args = cmd
        if module == "pruning.collect":  # argparse, not Hydra: its parser takes the arguments (it needs a sweep)
            from unittest import mock

            from gridface.pruning import collect

            with mock.patch.object(collect, "collect") as work:
                collect.main(args)
            assert work.called
            how = "arguments parsed by its own parser"
        else:
            cfgs = compose_stage(module, args, tmp_path)
            if "slurm" in c.text:
                assert "cluster" in c.needs, f"README l.{c.line}: a Slurm command needs a '# needs: cluster' mark"
            if "tensorrt" in c.text:
                assert "tensorrt" in c.needs, f"README l.{c.line}: a TensorRT command needs '# needs: tensorrt'"
            trains = [cfg for cfg in cfgs if "trainer" in cfg and module in ("train", "tune", "pipeline")]
            if not c.needs & {"gpu", "cluster"} and not gpu_here:
                for cfg in trains:
                    assert not wants_gpu(cfg.trainer.get("accelerator")), \
                        f"README l.{c.line}: composes a GPU trainer; mark it '# needs: gpu': {c.text}"
            real = next((r for r in REAL if r in c.text), None)
            if real and not c.needs:
                if "pipeline_smoke" in real:
                    how = f"ran ({smoke_seconds:.0f} s, by the smoke_pipeline fixture)"
                else:
                    argv = [*shlex.split(text), *([SHORTEN] if module == "train" else [])]
                    seconds = run_real(argv, env)
                    how = f"ran ({seconds:.0f} s{', + ' + SHORTEN if module == 'train' else ''})"
            else:
                how = f"composed ({len(cfgs)} config{'s' if len(cfgs) > 1 else ''})"
        marks = f" [needs: {', '.join(sorted(c.needs))}]" if c.needs else ""
        report.append(f"l.{c.line} {how}{marks}: {c.text}")
        print(report[-1], file=sys.stderr, flush=True)
    for line, code in snippets:
        code = substitute(code, table, {})
        seconds = run_real([sys.executable, "-c", code], env)
        report.append(f"l.{line} ran ({seconds:.0f} s): the Python snippet ({code.count(chr(10))} lines)")
    with capsys.disabled():
        print("\nREADME commands and how each was checked:\n" + "\n".join(report))
