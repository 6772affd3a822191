"""The wheel carries every subpackage and the Hydra configs (gridface.configs <- configs/)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_config_group_is_listed_in_pyproject():
    """setuptools builds only the packages it is told of; a config group folder left out of the list (a new one,
    say) would be missing from the wheel, or dropped by a later setuptools."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"gridface"} | {f"gridface.{p.parent.name}" for p in (ROOT / "src" / "gridface").glob("*/__init__.py")}
    configs = ROOT / "configs"
    groups = {"gridface.configs"} | {"gridface.configs." + ".".join(d.relative_to(configs).parts)
                                     for d in configs.rglob("*") if d.is_dir()}
    wanted = on_disk | groups
    assert listed == wanted, (f"pyproject's packages lack {sorted(wanted - listed)}, "
                              f"and list {sorted(listed - wanted)}, which are not on disk")


@pytest.mark.slow
def test_wheel_contains_configs_and_modules(tmp_path):
    """Built from a copy of the sources: setuptools reuses a checkout's build/ folder, whose stale files would hide
    a package-data rule that no longer matches."""
    project = tmp_path / "project"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "configs"):
        shutil.copytree(ROOT / folder, project / folder, ignore=skip)
    for file in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / file, project / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(project)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("gridface-*.whl"))).namelist()
    src, configs = ROOT / "src", ROOT / "configs"
    expected = [f.relative_to(src).as_posix() for f in (src / "gridface").rglob("*.py")]
    expected += [f"gridface/configs/{f.relative_to(configs).as_posix()}" for f in configs.rglob("*.yaml")]
    assert "gridface/configs/callbacks/prune/ratio.yaml" in expected  # the globs see nested groups
    missing = sorted(set(expected) - set(names))
    assert not missing, f"not in the wheel: {missing}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


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
