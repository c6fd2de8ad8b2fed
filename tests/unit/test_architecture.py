"""The package's shape: no import cycles, a core that knows no method, no process exits in the library.

Imports are read from the source (every ``import`` statement, also those inside functions), so a
cycle that lazy imports would hide at run time still fails here.
"""

import ast
from pathlib import Path

import attnscope

PACKAGE = Path(attnscope.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("attnscope",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """attnscope modules that ``name`` imports (a name imported from a package counts as that
    package unless it is a submodule)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_imports_no_method_and_nothing_imports_the_top_package():
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("attnscope.core"):
            assert not any(t.startswith("attnscope.methods.") and t != "attnscope.methods" for t in targets), name
        if name != "attnscope":
            assert "attnscope" not in targets, f"{name} imports the top-level package"


def test_library_never_exits_the_process():
    for name, path in _modules().items():
        if name.startswith("attnscope.cli"):
            continue
        source = path.read_text()
        assert "sys.exit" not in source and "SystemExit" not in source, name


def test_no_training_code_in_the_package():
    assert not (PACKAGE / "models").exists()
    assert {p.name for p in (PACKAGE / "weights").iterdir() if p.is_dir()} >= {"shapes-unet", "shapes-mmdit"}
