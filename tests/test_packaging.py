"""The wheel carries every subpackage and the Hydra configs (gridface.configs <- configs/)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"gridface"} | {f"gridface.{p.parent.name}" for p in (ROOT / "src" / "gridface").glob("*/__init__.py")}
    assert on_disk | {"gridface.configs"} == listed


@pytest.mark.slow
def test_wheel_contains_configs_and_modules(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("gridface-*.whl"))).namelist()
    for required in ("gridface/configs/train.yaml", "gridface/configs/dataset/widerface.yaml",
                     "gridface/configs/experiment/synthetic_cpu.yaml", "gridface/export/__main__.py",
                     "gridface/evaluation/widerface.py", "gridface/configs/prune.yaml",
                     "gridface/configs/callbacks/prune/ratio.yaml", "gridface/configs/callbacks/export/onnx.yaml",
                     "gridface/configs/targets/gridbox.yaml", "gridface/pruning/pruner.py"):
        assert required in names
