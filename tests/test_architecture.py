"""The layout rules a newcomer relies on: entry points are thin and never import each other, the library has no
import cycles (between modules or between packages, counting the imports inside functions too), ``gridface.utils`` is
a leaf, and the exported-model contract lives in one module that imports neither torch nor onnxruntime."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY_POINTS = {"gridface.train", "gridface.prune", "gridface.export.cli", "gridface.export.__main__",
                "gridface.evaluate", "gridface.infer", "gridface.tune", "gridface.check_data", "gridface.pipeline"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gridface_imports(path: Path, top_level_only: bool) -> set[str]:
    """The gridface modules ``path`` imports: the top-level statements only, or every ``import`` / ``from`` at any
    depth (inside functions, methods, ``if TYPE_CHECKING:``). ``from gridface.pkg import mod`` names the module
    ``gridface.pkg.mod`` when it is one."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gridface":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gridface")
    return found


MODULES = {module_name(p): p for p in (SRC / "gridface").rglob("*.py")}


def test_entry_points_do_not_import_each_other():
    assert set(MODULES) >= ENTRY_POINTS, sorted(ENTRY_POINTS - set(MODULES))
    for entry in ENTRY_POINTS:
        allowed = {entry, "gridface.export.cli"}  # python -m gridface.export runs export/cli.py's main
        others = gridface_imports(MODULES[entry], top_level_only=False) & (ENTRY_POINTS - allowed)
        assert not others, f"{entry} imports the entry points {sorted(others)}; share code through gridface.stages"
    for name, path in MODULES.items():
        if name not in ENTRY_POINTS:
            used = gridface_imports(path, top_level_only=False) & ENTRY_POINTS
            assert not used, f"library module {name} imports the entry points {sorted(used)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list that starts and ends with the same node), or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, nxt])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the gridface modules it imports, wherever in the file the import statement is."""
    return {name: {m for m in gridface_imports(path, top_level_only=False) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def package_of(module: str) -> str:
    """``gridface.evaluation.ap`` -> ``gridface.evaluation``; a top-level module and an entry point (it is not
    library code: nothing imports it) are their own node."""
    parts = module.split(".")
    return module if module in ENTRY_POINTS or len(parts) <= 2 or not (SRC / Path(*parts[:2])).is_dir() \
        else ".".join(parts[:2])


def test_finding_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_library_has_no_import_cycles():
    """Between modules, counting function-level imports: a deferred import hides a cycle, it does not remove it."""
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_packages_have_no_import_cycles():
    """Between the packages (data, evaluation, inference, export, stages, ...) and the top-level modules: a
    package's modules may import another package only if that one never imports back."""
    graph: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for module, used in import_graph().items():
        for other in used:
            a, b = package_of(module), package_of(other)
            if a != b:
                graph.setdefault(a, set()).add(b)
                why.setdefault((a, b), f"{module} imports {other}")
    cycle = find_cycle(graph)
    assert cycle is None, "package import cycle: " + "; ".join(why[e] for e in zip(cycle, cycle[1:], strict=False))


def test_utils_is_a_leaf():
    """gridface.utils may import torch, numpy, omegaconf, ... but no other gridface module."""
    for name, path in MODULES.items():
        if name.startswith("gridface.utils"):
            used = {m for m in gridface_imports(path, top_level_only=False) if not m.startswith("gridface.utils")}
            assert not used, f"{name} imports {sorted(used)}: gridface.utils must not import the rest of gridface"


def test_model_contract_imports_no_runtime():
    code = ("import sys, gridface.contract as c; c.read_metadata; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in ("gridface.stages.export", "gridface.inference.backends", "gridface.inference.tensorrt_backend",
                 "gridface.export.onnx_export", "gridface.export.quantize", "gridface.export.tensorrt_build"):
        assert "gridface.contract" in gridface_imports(MODULES[name], top_level_only=True), name
