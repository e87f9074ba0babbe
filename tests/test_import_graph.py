"""The import graph of the package, drawn from the code: every arrow points
down. No module imports, at the top or inside a function, a module that
imports it back; the artefacts (hub, export) and the runtime never load the
training driver; and every module imports in a fresh interpreter whatever
was imported before it."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folders and the package names they are installed under (setup.cfg).
SOURCES = (("psconv_tf", "psconv_tf"), ("models", "psconv_tf.models"))
# Never imported on their own: running them runs a command line.
ENTRY_POINTS = ("psconv_tf.export.__main__",)


def _modules():
    """{module name: file path} of every module of the package."""
    modules = {}
    for folder, package in SOURCES:
        base = os.path.join(ROOT, folder)
        for directory, _, files in os.walk(base):
            for file in files:
                if not file.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(directory, file), base)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join([package, *parts])] = os.path.join(directory, file)
    return modules


def _enclosing(name, modules):
    """The module `name` lies in: `name` itself, or the package holding it
    when `name` is an attribute (`from psconv_tf.graph import rebuild`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _targets(node, module, modules):
    """Modules of the package that the import statement `node` in `module`
    names: `import a.b` names a.b, `from a import b` names a.b if it is a
    module, else a. Imports of other packages (keras-hub, matplotlib,
    torch, ...) are not part of this graph."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against the importing package
            package = module if modules[module].endswith("__init__.py") else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = ".".join(filter(None, [package, node.module]))
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    else:
        return []
    names = [_enclosing(name, modules) for name in names]
    return [name for name in names if name and name != module]


def import_graph(with_packages=False):
    """{module: set of modules it imports}, function-level imports included.
    `with_packages`: importing a submodule also counts as importing each
    package above it, whose __init__ runs first."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        edges = set()
        for node in ast.walk(tree):
            for target in _targets(node, module, modules):
                edges.add(target)
                while with_packages and "." in target:
                    target = target.rpartition(".")[0]
                    if target in modules and not module.startswith(target + "."):
                        edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph):
    """The strongly connected sets of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
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
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reached(graph, start):
    """Every module `start` loads, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_drawn_from_the_code():
    graph = import_graph()
    # `from package import module`, `from module import name`, and imports
    # inside functions (the optional fused implementation) are all edges.
    assert {"psconv_tf.graph", "psconv_tf.layers.ps_conv2d"} <= graph["psconv_tf.convert"]
    assert "psconv_tf.engine.fused_executor" in graph["psconv_tf.layers.ps_conv2d"]
    assert "psconv_tf.models.resnet" in graph["psconv_tf.models"]
    assert "psconv_tf.engine" not in graph["psconv_tf.layers.ps_conv2d"]
    assert "psconv_tf.engine" in import_graph(with_packages=True)["psconv_tf.layers.ps_conv2d"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def _training_reached_from(package):
    graph = import_graph(with_packages=True)
    offenders = {
        module: sorted(t for t in reached(graph, module) if t.startswith("psconv_tf.training"))
        for module in graph
        if module == package or module.startswith(package + ".")
    }
    return {module: targets for module, targets in offenders.items() if targets}


def test_the_runtime_never_loads_the_training_driver():
    assert _training_reached_from("psconv_tf.runtime") == {}


@pytest.mark.parametrize("package", ["psconv_tf.hub", "psconv_tf.export"])
def test_artefacts_never_load_the_training_driver(package):
    assert _training_reached_from(package) == {}


_IMPORT_ALL = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as error:
        # An optional dependency that is not installed: only that module.
        if error.name and not error.name.startswith("psconv_tf"):
            continue
        raise
print("imported", len(sys.argv) - 1)
"""


@pytest.mark.parametrize("order", ["alphabetical", "reverse"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    names = sorted(name for name in _modules() if name not in ENTRY_POINTS)
    if order == "reverse":
        names.reverse()
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *names],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(names)}" in result.stdout
