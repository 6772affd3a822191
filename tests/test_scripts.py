"""The benchmark scripts (``make bench``) as a user runs them: what they write loads, and a mistake is one line."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, timeout=300)


def test_the_models_bench_deploy_keeps_load_without_a_checkpoint(tmp_path):
    """make bench on a fresh machine (no make train checkpoint yet) stopped at its second step: the untrained
    network's models carried a metadata file gridface's own loader refused (no input and output names)."""
    from gridface import Detector

    models = script_module("bench_deploy").export_models(None, (64, 96), tmp_path, "deploy")
    for key in ("onnx_fp32", "onnx_int8"):
        faces = Detector.load(models[key])(np.zeros((48, 80, 3), np.uint8))
        assert faces.boxes.shape[1:] == (4,)


def test_a_scripts_mistake_is_one_line_naming_the_script(tmp_path):
    """A missing model or a count of 0 ended in a traceback (FileNotFoundError, IndexError)."""
    missing = run_script("bench_infer", "--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.splitlines()[0] == f"bench_infer.py: error: --model {tmp_path / 'nope.onnx'}: no such file"
    zero = run_script("bench_infer", "--model", "m.onnx", "--images", "0")
    assert zero.returncode == 2 and "argument --images: '0': must be a whole number >= 1" in zero.stderr


def test_a_scripts_help_shows_its_whole_description_with_the_command_to_run(monkeypatch, capsys):
    """bench_int8 and bench_qat's --help showed only their docstring's first line, not how to call them."""
    monkeypatch.setattr(sys, "argv", ["bench_qat.py", "--help"])
    monkeypatch.syspath_prepend(str(SCRIPTS))  # as python puts a script's folder first (it imports bench_int8)
    with pytest.raises(SystemExit) as e:
        script_module("bench_qat").main()
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert "\n    PYTHONPATH=src .venv/bin/python scripts/bench_qat.py --checkpoint <.ckpt> --qat" in shown
