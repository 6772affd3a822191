"""The layout rules a newcomer relies on: entry points are thin and never import each other, the library has no
import cycles, and the exported-model contract lives in one module that imports neither torch nor onnxruntime."""

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
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gridface"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gridface"))
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


def test_library_has_no_import_cycles():
    graph = {name: {m for m in gridface_imports(path, top_level_only=True) if m in MODULES}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_model_contract_imports_no_runtime():
    code = ("import sys, gridface.contract as c; c.read_metadata; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in ("gridface.stages.export", "gridface.inference.backends", "gridface.inference.tensorrt_backend",
                 "gridface.export.onnx_export", "gridface.export.quantize", "gridface.export.tensorrt_build"):
        assert "gridface.contract" in gridface_imports(MODULES[name], top_level_only=True), name
