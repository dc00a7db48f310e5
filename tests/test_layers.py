"""The library's import graph: every module imports, no cycles, and layers only import downward.

Both module-level and function-level imports count (a function-level import only hides a cycle
until the function runs). The layers, lowest first, are those of ``docs/architecture.md``.
"""

import ast
import importlib
from pathlib import Path

import pytest

import saferlhfv

PACKAGE = Path(saferlhfv.__file__).resolve().parent

#: layer -> module-name prefixes (a module belongs to the layer of its longest matching prefix;
#: ``saferlhfv`` itself names only the package's ``__init__``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("saferlhfv", "saferlhfv.paths", "saferlhfv.io", "saferlhfv.config", "saferlhfv.masks", "saferlhfv.plotting",
     "saferlhfv.artifacts", "saferlhfv.threads", "saferlhfv.finite", "saferlhfv.faults"),
    ("saferlhfv.data",),
    ("saferlhfv.algorithms",),
    ("saferlhfv.models",),
    ("saferlhfv.evaluate", "saferlhfv.guardrail", "saferlhfv.streaming_guardrail", "saferlhfv.train.loop"),
    ("saferlhfv.train", "saferlhfv.interpret"),
    ("saferlhfv.stages",),
    ("saferlhfv.sweep", "saferlhfv.run", "saferlhfv.diagnostics", "saferlhfv.pipeline", "saferlhfv.bench",
     "saferlhfv.rollout_table", "saferlhfv.dual", "saferlhfv.live", "saferlhfv.widgets", "saferlhfv.figures",
     # a stage's own command line sits above the stage table
     "saferlhfv.train.monitor.__main__", "saferlhfv.check_gpu"),
)  # fmt: skip


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported saferlhfv module: line}, from every import statement anywhere in the file.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; relative
    imports are resolved against the importing module's package.
    """
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target in mods and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "saferlhfv" and module.startswith(prefix + "."))
            if inside and len(prefix) > best:
                best, layer = len(prefix), i
    assert layer is not None, f"{module} is in no layer of tests/test_layers.py: add it"
    return layer


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not m.endswith(".__main__")))
def test_every_module_imports(module):
    """Every module imports on its own (a ``__main__`` entry point would run, so it is left out)."""
    importlib.import_module(module)


def test_the_cycle_finder_finds_a_hidden_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 9}, "d": {"a": 2}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 2}}) is None


def test_no_import_cycles():
    graph = import_graph(_modules())
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
        + f" -> {cycle[-1]}"
    )


def test_layers_only_import_downward():
    graph = import_graph(_modules())
    upward = [
        f"{a}:{line} imports {b} (layer {layer_of(b)} > {layer_of(a)})"
        for a, edges in graph.items()
        for b, line in edges.items()
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)
