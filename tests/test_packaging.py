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


def test_the_gpu_kit_brings_versions_the_project_accepts():
    """scripts/gpu_kit.txt pins what the lent GPU machine lacks, one ``name==version`` a line; a version pyproject
    refuses (torchdata's, whose state layout the datamodule reads, say) would have the GPU run test code against a
    package the project does not install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    kit = []
    for n, line in enumerate((ROOT / "scripts" / "gpu_kit.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins = [s.version for s in req.specifier if s.operator == "=="]
            assert len(pins) == 1, f"scripts/gpu_kit.txt:{n}: {line!r} is not one name==version pin"
            kit.append((req.name, pins[0]))
    assert {canonicalize_name(name) for name, _ in kit} >= {"hydra-core", "omegaconf", "albumentations", "torchdata",
                                                            "torch-pruning", "faster-coco-eval"}
    checked = 0
    for name, version in kit:
        for req in wanted:
            if canonicalize_name(req.name) == canonicalize_name(name):
                assert req.specifier.contains(version, prereleases=True), f"gpu_kit.txt {name}=={version}, " \
                                                                          f"pyproject {req}"
                checked += 1
    assert checked >= 6
