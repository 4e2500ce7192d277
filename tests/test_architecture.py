"""The package's shape, checked: layered imports without cycles, no private names across modules,
small modules and functions. Every import counts, including those inside functions.

The layers, bottom first (a module may import its own layer or a lower one, never a higher one):
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "guardrail"

LAYERS: list[tuple[str, ...]] = [
    # types, constants and input decoding that everything else uses
    (
        "guardrail.errors",
        "guardrail.version",
        "guardrail.defaults",
        "guardrail.resources",
        "guardrail.conversation",
        "guardrail.requests",
        "guardrail.results",
        "guardrail.audio",
        "guardrail.progress",
    ),
    ("guardrail.models",),  # adapters, model identity, loading
    ("guardrail.policy", "guardrail.steering"),  # what to do; the vectors and artifacts
    ("guardrail.runtime", "guardrail.gate"),  # hooks and device buffers; the probe gate
    ("guardrail.obs",),  # logs, metrics, streaming
    ("guardrail.guard",),  # the orchestrator
    (
        "guardrail.bench",
        "guardrail.evaluation",
        "guardrail.integrations",
        "guardrail.serve",
        "guardrail.testing",
        "guardrail.cli",
    ),
    ("guardrail",),  # the package root: the curated public API
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
EXEMPT_FUNCTIONS = {("guardrail/cli/main.py", "build_parser")}  # an argparse table, long by nature


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [alias.name for alias in node.names], node.lineno


def _targets(base: str, names: list[str]) -> list[str]:
    """The guardrail modules an import statement loads (a submodule named in `from pkg import sub` included)."""
    if base not in MODULES:
        return []
    subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
    return subs + ([base] if len(subs) < len(names) or not names else [])


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for base, names, _ in _imports(name, path):
            graph[name].update(t for t in _targets(base, names) if t != name)
    return graph


def _layer(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_cycle_finder_sees_function_level_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from guardrail.guard import Guard\n"
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "guardrail.guard" for n in ast.walk(tree))


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(module) and not module.startswith(target + "."):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert upward == []


def _python_files() -> Iterator[Path]:
    for folder in ("guardrail", "tests", "benchmarks"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_private_names_across_modules():
    """`from guardrail.x import _y` and `guardrail.x._y` reach into another module's internals."""
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guardrail"):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                dotted = _dotted(node.value)
                if dotted and dotted.split(".")[0] in {"guardrail"} | _module_aliases(tree):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {dotted}.{node.attr}")
    assert offenders == []


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _module_aliases(tree: ast.AST) -> set[str]:
    """Local names bound to guardrail modules (`from guardrail.runtime import static`, `import x as y`)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guardrail"):
            aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name in MODULES}
    return aliases


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines (at most {MAX_MODULE_LINES}): split it"


def test_functions_are_short():
    long = []
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in EXEMPT_FUNCTIONS:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_layers_name_real_packages():
    names = {prefix for layer in LAYERS for prefix in layer}
    assert all(name in MODULES for name in names), sorted(names - set(MODULES))
