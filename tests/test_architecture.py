"""The import graph of lspt_cli keeps the layers of docs/architecture.md: no module imports one of
a higher layer, no two modules import each other (directly or round a cycle), and the core never
imports a built-in plugin. Imports inside functions count: a lazy import is still a dependency.

A new module must be given a layer here; that is the moment to decide where it belongs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lspt_cli"

# Lowest first. Within a layer imports are free (but never round a cycle).
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations: errors, texts, files, paths, numbers, what a plugin registers",
     {"errors", "messages", "atomic", "locks", "paths", "validate", "hookspecs", "specs", "backbone_dims", "rundir",
      "run_handle", "lspt_cli"}),
    ("registries, configs and files: plugins, the run-config schema, recipes, bundles, manifests",
     {"plugins", "settings", "recipes", "schema", "bundle", "weights", "selection", "loggers", "scaffold", "data",
      "data.manifest", "data.images", "data.transforms", "data.cache", "data.loader"}),
    ("the prompted model: a frozen backbone driven token by token",
     {"backbone", "prompted"}),
    ("the engine: training, evaluation, checkpoints",
     {"engine", "engine.accel", "engine.checkpoint", "engine.distributed", "engine.evaluate", "engine.feature_cache",
      "engine.grad_watch", "engine.restore", "engine.totals", "engine.train", "engine.schedule", "engine.rng",
      "engine.run_files", "engine.optimizer", "engine.bundle_check", "engine.data_init",
      "engine.memory_estimate", "engine.loss_watch"}),
    ("what is built on the engine: sweeps, reports, explanations, the Python API, the server, the checks",
     {"sweep", "sweep.driver", "sweep.executors", "sweep.grid", "sweep.render", "sweep.state", "report", "explain",
      "api", "serve", "serve.app", "serve.batcher", "serve.metrics", "serve.registry", "serve.server", "serve.ray_engine",
      "conformance"}),
    ("the command line, and the plugin authors' kit that drives it",
     {"cli", "__main__", "testing"} | {f"cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or "lspt_cli"


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path) -> set[str]:
    """The lspt_cli modules (and lspt_plugins) a module imports, anywhere in its body."""
    package = name.split(".") if path.name == "__init__.py" and name != "lspt_cli" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join(base + ([node.module] if node.module else []))
                absolute = "lspt_cli." + module if module else "lspt_cli"
            else:
                absolute = node.module or ""
            targets = [f"{absolute}.{alias.name}" for alias in node.names] + [absolute]
        else:
            continue
        for target in targets:
            if target.startswith("lspt_plugins"):
                found.add("lspt_plugins")
                continue
            if target != "lspt_cli" and not target.startswith("lspt_cli."):
                continue
            local = target.removeprefix("lspt_cli").removeprefix(".") or "lspt_cli"
            while local not in MODULES and "." in local:
                local = local.rsplit(".", 1)[0]
            if local in MODULES and local != name:
                found.add(local)
    # `from .x import y` also names `lspt_cli.x.y`: keep the module, drop what is an attribute
    return {m for m in found if m == "lspt_plugins" or m in MODULES}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def layer_of(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if name in members:
            return index
    raise AssertionError(f"lspt_cli/{name.replace('.', '/')}: give this module a layer in tests/test_architecture.py")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} ({LAYERS[layer_of(a)][0].split(':')[0]}) imports {b} ({LAYERS[layer_of(b)][0].split(':')[0]})"
              for a, targets in GRAPH.items() for b in targets if b != "lspt_plugins" and layer_of(b) > layer_of(a)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_the_core_never_imports_a_built_in_plugin():
    assert not [a for a, targets in GRAPH.items() if "lspt_plugins" in targets]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_checks_find_what_they_look_for():
    """The walker sees imports inside functions and relative imports, and the cycle finder a cycle."""
    assert "plugins" in GRAPH["data.manifest"]  # `from ..plugins import ...` inside a function
    assert "cli.output" in GRAPH["cli.tune"] and "settings" in GRAPH["recipes"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
