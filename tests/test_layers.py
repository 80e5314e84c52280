"""The layering holds: parsed from the source, every import (module level or inside a function) respects the layer
map of CONTRIBUTING.md, and neither modules nor layers import each other in a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vitdeploy"
GROUND = {"errors", "io", "provenance", "progress", "distributed", "schema", "precision", "validate"}
FLOOR = {"models", "data", "runtime", "viz"}
STAGES = {"compression", "deploy", "bench"}
TOP = {"api", "cli", "__main__", "vitdeploy"}  # the package root re-exports the API, lazily


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_ALL = {_module_name(p) for p in PKG.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported vitdeploy module, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("vitdeploy"):
            subs = [f"{node.module}.{a.name}" for a in node.names]
            # `from pkg import submodule` imports the submodule; `from pkg import name` imports pkg (its __init__)
            names = [n for n in subs if n in _ALL] + ([node.module] if any(n not in _ALL for n in subs) else [])
            out += [(n, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("vitdeploy")]
    return out


def _real(name: str, modules: set[str]) -> str | None:
    """The module an import name refers to (`from vitdeploy.models import load_model` -> vitdeploy.models)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
EDGES = {m: {(r, top) for n, top in _imports(p) if (r := _real(n, set(MODULES))) and r != m}
         for m, p in MODULES.items()}


def layer(module: str) -> str:
    """A module's unit in the layer map: the package folder (models, compression, ...) or the top-level file."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitdeploy"


def rank(unit: str) -> int:
    return 0 if unit in GROUND else 1 if unit in FLOOR else 2 if unit in STAGES else 3


def test_the_map_covers_every_module():
    units = {layer(m) for m in MODULES}
    assert units <= GROUND | FLOOR | STAGES | TOP, units - (GROUND | FLOOR | STAGES | TOP)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module):
    src = layer(module)
    for target, _ in EDGES[module]:
        dst = layer(target)
        if dst == src or target == "vitdeploy":  # within a unit; the package root (version, lazy API names)
            continue
        assert not (src in STAGES and dst in STAGES), f"stage {module} imports stage {target}"
        assert dst != "bench" or src in TOP, f"{module} imports {target}: bench/ is for the CLI and the API only"
        assert rank(dst) <= rank(src), f"{module} ({src}) imports {target} ({dst}), a layer above it"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_module_import_cycle():
    """Module-level imports form no cycle (imports inside functions run later and are left to the layer rules)."""
    graph = {m: {t for t, top in e if top and t != "vitdeploy"} for m, e in EDGES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_layer_cycle():
    """Between units (models, data, runtime, compression, ...) no cycle either, counting every import."""
    graph: dict[str, set[str]] = {}
    for m, e in EDGES.items():
        graph.setdefault(layer(m), set()).update(layer(t) for t, _ in e if layer(t) != layer(m) and t != "vitdeploy")
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_checker_sees_a_violation():
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert layer("vitdeploy.compression.vtp") == "compression" and rank("bench") == rank("deploy") == 2


def test_importing_a_stage_stays_light():
    """Importing the compression stage neither probes TensorRT nor loads matplotlib (run in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, vitdeploy.compression.pipeline, vitdeploy.deploy, vitdeploy.runtime; "
            "print(sorted(m for m in ('tensorrt', 'matplotlib.pyplot', 'vitdeploy.bench.latency', 'onnxruntime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
