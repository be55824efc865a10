"""The code's layout rules, checked on the source: dependencies point one way (no import cycle,
counting imports inside functions, since that is how a cycle hides; library modules never
import the command layer), a function-level import of an aecli module is there only to delay a
heavy library, and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "aecli"
COMMAND_LAYER = ("aecli.cli", "aecli.commands", "aecli.__main__")
# Imported lazily for start-up speed: `aecli --help` and `validate` must not load them.
HEAVY = ("tensorflow", "keras", "sklearn", "matplotlib", "jax", "torch", "PIL", "scipy", "fastapi", "uvicorn", "onnx")
MAX_FUNCTION_LINES = 60
# Longer on purpose: a straight sequence that reads best in one place.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _target(node: ast.Import | ast.ImportFrom, current: str) -> list[str]:
    """The aecli modules an import statement loads (the deepest module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = current.split(".")
            if MODULES[current].name != "__init__.py":
                package = package[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != "aecli" and name != current and not current.startswith(f"{name}."):
            found.add(name)
    return sorted(found)


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(aecli modules imported at module level, aecli modules imported inside functions); imports
    under `if TYPE_CHECKING:` count, so that a cycle cannot hide there either."""
    tree = ast.parse(MODULES[module].read_text())
    top, lazy = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lazy.update(_target(inner, module))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(set(_target(node, module)) - lazy)
    return top, lazy


def _loads_heavy_library(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] in HEAVY for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in HEAVY:
            return True
    return False


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_among_aecli_modules() -> None:
    edges = {module: set().union(*_imports(module)) for module in MODULES}
    assert _cycles(edges) == []


def test_library_modules_never_import_the_command_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module in MODULES
        if not module.startswith(COMMAND_LAYER)
        for target in set().union(*_imports(module))
        if target.startswith(COMMAND_LAYER)
    ]
    assert upward == []


def test_function_level_imports_only_delay_heavy_libraries() -> None:
    """An aecli module imported inside a function must load a heavy library itself (or be a
    command, which the CLI loads on demand); any other lazy import is a dodged cycle."""
    dodges = [
        f"{module} -> {target}"
        for module in MODULES
        for target in _imports(module)[1]
        if not _loads_heavy_library(target) and not target.startswith("aecli.commands")
    ]
    assert dodges == []


def test_functions_stay_short() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                name = f"{module}.{node.name}"
                if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long.append(f"{name} ({lines} lines)")
    assert long == []


def test_the_rules_see_what_they_check() -> None:
    """The checks above would pass vacuously if the walk found nothing."""
    assert {"aecli.cli", "aecli.data.loading", "aecli.feeds", "aecli.training"} <= set(MODULES)
    top, _ = _imports("aecli.data.loading")
    assert "aecli.data.sources" in top
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _loads_heavy_library("aecli.training") and not _loads_heavy_library("aecli.config")
