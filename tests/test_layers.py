"""The package's layers: imports run one way, from the web down to the records, with no cycle.

Read from the source with ``ast`` (nothing is imported but the package's own location): every
``import`` counts, also those inside functions and under ``TYPE_CHECKING`` — a lower module that
needs something from above takes it as an argument or a registered callback.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import flask_polysms

PACKAGE = "flask_polysms"

#: Highest first. A module may import its own layer (without a cycle) and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "wiring",
        (
            "flask_polysms",
            "flask_polysms.extension",
            "flask_polysms.cli",
            "flask_polysms.cli_opt_outs",
            "flask_polysms.demo",
            "flask_polysms.jobs",
            "flask_polysms.pytest_plugin",
            "flask_polysms.emulator",
            "flask_polysms.testing",
        ),
    ),
    ("web", ("flask_polysms.web",)),
    ("services", ("flask_polysms.services",)),
    # flask_polysms.store: the port's old address, for third-party backends.
    ("ports", ("flask_polysms.ports", "flask_polysms.backends", "flask_polysms.store")),
    (
        "core",
        (
            "flask_polysms.authorisation",
            "flask_polysms.clock",
            "flask_polysms.config",
            "flask_polysms.crypto",
            "flask_polysms.errors",
            "flask_polysms.media",
            "flask_polysms.phone",
            "flask_polysms.records",
            "flask_polysms.segments",
            "flask_polysms.signals",
        ),
    ),
]


def _modules() -> dict[str, Path]:
    """Every module of the package (backends included, wherever installed), by dotted name."""
    roots = [(PACKAGE, Path(flask_polysms.__file__).parent)]
    backends = importlib.import_module(f"{PACKAGE}.backends")
    roots.append((f"{PACKAGE}.backends", Path(backends.__file__).parent))
    found: dict[str, Path] = {}
    for prefix, folder in roots:
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if prefix == PACKAGE and name.startswith(f"{PACKAGE}.backends"):
                continue  # a non-editable install puts backends/ inside: read it once
            found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import module` imports the module; `from module import name`, it.
                wanted = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            else:
                continue
            for target in wanted:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    resolved = resolve(target)
                    if resolved is not None and resolved != name:
                        targets.add(resolved)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    """The layer's rank, 0 the highest; the longest matching prefix decides."""
    best: tuple[int, int] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    assert len(_modules()) > 30
    for module in _modules():
        _layer(module)


def test_imports_run_only_downward():
    graph = _imports(_modules())
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) < _layer(module)
    ]
    assert upward == []


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_the_check_sees_a_cycle_and_an_upward_import():
    graph = {"flask_polysms.services.a": {"flask_polysms.web.b"}, "flask_polysms.web.b": set()}
    assert _layer("flask_polysms.services.a") > _layer("flask_polysms.web.b")
    graph["flask_polysms.web.b"].add("flask_polysms.services.a")
    assert _cycles(graph) == [["flask_polysms.services.a", "flask_polysms.web.b"]]


def test_third_party_backends_keep_the_stores_old_address():
    from flask_polysms.ports import store as port
    from flask_polysms.store import Store

    assert Store is port.Store
