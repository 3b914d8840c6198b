"""The layers of the consortium package, enforced from its source.

Every module's imports are read from its syntax tree, wherever they are: at the top, inside a
function, under `if TYPE_CHECKING:` (an import hidden in a function is still a dependency, and a
circle hidden that way is still a circle). `from consortium.x import y` where y is a module is an
import of consortium.x.y. Two rules:

- no import cycle between modules;
- a package imports only the packages below it in LAYERS.

Nothing else is allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

# Each layer and the layers directly below it; a layer may import those and, transitively,
# everything below them (its own modules too). Read top to bottom:
#     cli -> client -> protocol <- node -> {pbft, crashft} -> ledger -> crypto
#     sim -> node.executor -> {pbft, crashft}
# `node.executor` is the one module of the node the simulator runs (it is Trio-free and I/O-free).
# The HTTP/JSON gateway is of the node layer (node.gateway: it serves through the member's
# client handler, node/service.py) and its Python client of the client layer (client.gateway):
# neither is a layer of its own, and the client side never imports the node's.
LAYERS: dict[str, tuple[str, ...]] = {
    "__main__": ("cli",),  # `python -m consortium`
    "cli": ("client", "node", "sim"),
    # TESTS ONLY, and nothing imports it: faults around a real member, and attackers that
    # speak to members as clients or peers would (attacks.py, peer_flood.py)
    "testing": ("cli", "node"),
    "client": ("protocol",),
    "node": ("protocol", "node.executor"),
    "sim": ("node.executor",),
    "node.executor": ("pbft", "crashft"),
    "protocol": ("ledger",),
    "pbft": ("ledger",),
    "crashft": ("ledger",),
    "ledger": ("crypto",),
    "crypto": ("compiled",),
    # consortium/__init__.py: the version, and the compiled modules' switch it installs first
    # (compiled.py); anyone may import it
    "__init__": ("compiled",),
    "compiled": (),
}


ROOT = "consortium"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / ROOT


@dataclass(frozen=True, slots=True)
class Edge:
    """One import: `source` imports `target`, at `path`:`line`, written as `text`."""

    source: str
    target: str
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target} ({self.text})"


# ----------------------------------------------------------------------------------- the graph


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources(package_dir: Path) -> dict[str, tuple[str, str]]:
    """Module name -> (path shown in messages, source text) for every module of the package."""
    sources = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        shown = str(path.relative_to(package_dir.parent))
        sources[module_name(path, package_dir)] = (shown, path.read_text())
    return sources


def imports_of(
    name: str, path: str, source: str, modules: Iterable[str], root: str = ROOT
) -> list[Edge]:
    """Every import of a module of `root` in one module's source, wherever it is written."""
    known = set(modules)
    is_package = path.endswith("__init__.py")
    edges = []
    seen: set[tuple[str, ast.AST]] = set()  # (one edge for `from m import a, b`)

    def add(target: str, node: ast.stmt | ast.expr) -> None:
        if (target == root or target.startswith(root + ".")) and (target, node) not in seen:
            seen.add((target, node))
            text = " ".join((ast.get_source_segment(source, node) or "").split())
            edges.append(Edge(name, target, path, node.lineno, text))

    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, `level` steps up
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                frm = ".".join(base + ([node.module] if node.module else []))
            else:
                frm = node.module or ""
            for alias in node.names:
                sub = f"{frm}.{alias.name}"
                add(sub if sub in known else frm, node)
        elif (
            isinstance(node, ast.Call)
            and _called(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)  # an import by name is an import too
    return edges


def _called(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def import_graph(sources: Mapping[str, tuple[str, str]], root: str = ROOT) -> list[Edge]:
    edges = []
    for name, (path, source) in sources.items():
        edges += imports_of(name, path, source, sources, root)
    return edges


@cache
def the_package() -> tuple[tuple[str, ...], tuple[Edge, ...]]:
    sources = package_sources(PACKAGE_DIR)
    return tuple(sources), tuple(import_graph(sources))


# ------------------------------------------------------------------------------------ cycles


@dataclass(frozen=True, slots=True)
class Circle:
    """A group of modules that import each other in circles (a strongly connected component),
    and one circle through them, its imports in order."""

    modules: tuple[str, ...]
    edges: tuple[Edge, ...]

    def __str__(self) -> str:
        return f"modules in circles: {', '.join(self.modules)}; one circle:\n" + "\n".join(
            f"  {e}" for e in self.edges
        )


def find_cycles(modules: Iterable[str], edges: Iterable[Edge]) -> list[Circle]:
    """Each group of modules that import each other in a circle (Tarjan's strongly connected
    components), with one circle through it."""
    out: dict[str, list[Edge]] = {m: [] for m in modules}
    for e in edges:
        out.setdefault(e.source, []).append(e)
        out.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # (recursive: the graph has ~150 modules)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in out[v]:
            w = e.target
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(out):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        cycle = _path_back(min(component), component, out)
        if cycle:
            cycles.append(Circle(tuple(sorted(component)), tuple(cycle)))
    return cycles


def _path_back(start: str, component: set[str], out: Mapping[str, list[Edge]]) -> list[Edge]:
    """The shortest path of edges from `start` back to itself inside `component` (breadth
    first); empty when there is none (a component of one module that does not import itself)."""
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for e in sorted(out[v], key=lambda e: (e.target, e.line)):
                if e.target not in component:
                    continue
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                if e.target not in came_by:
                    came_by[e.target] = e
                    following.append(e.target)
        frontier = following
    return []


# ------------------------------------------------------------------------------------ layers


def layer_of(module: str, layers: Mapping[str, object], root: str = ROOT) -> str | None:
    """The layer a module belongs to: the longest layer name that is its package (or itself)."""
    if module == root:
        return "__init__" if "__init__" in layers else None
    best = None
    for layer in layers:
        prefix = f"{root}.{layer}"
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def below(layers: Mapping[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Each layer -> every layer it may import: those listed under it and theirs, transitively."""
    reach: dict[str, set[str]] = {}

    def visit(layer: str) -> set[str]:
        if layer not in reach:
            reach[layer] = set()
            for lower in layers[layer]:
                reach[layer] |= {lower} | visit(lower)
        return reach[layer]

    for layer in layers:
        visit(layer)
    return reach


def layer_violations(
    modules: Iterable[str],
    edges: Iterable[Edge],
    layers: Mapping[str, tuple[str, ...]],
    root: str = ROOT,
) -> list[str]:
    """Why each import that goes against the layers does, one line each, naming the module,
    the line and the import."""
    edges = list(edges)
    reach = below(layers)
    problems = []
    for module in modules:
        if layer_of(module, layers, root) is None:
            problems.append(f"{module} belongs to no layer: add its package to LAYERS")
    by_source: dict[str, list[Edge]] = {}
    for e in edges:
        by_source.setdefault(e.source, []).append(e)

    def allowed(source_layer: str, e: Edge) -> bool:
        target_layer = layer_of(e.target, layers, root)
        if target_layer is None:
            return False
        if target_layer == source_layer or target_layer in reach[source_layer]:
            return True
        return target_layer == "__init__"

    for e in edges:
        source_layer = layer_of(e.source, layers, root)
        target_layer = layer_of(e.target, layers, root)
        if source_layer is None:
            continue  # (reported above)
        if not allowed(source_layer, e):
            may = ", ".join(sorted(reach[source_layer])) or "nothing of " + root
            problems.append(
                f"{e}: {source_layer} may import only {may} (a {target_layer} module is not "
                "below it)"
            )
            continue
        # Importing root.a.b runs root.a's __init__ too: when b is a layer of its own inside
        # a (node.executor in node), what that __init__ imports must be allowed for the importer.
        parts = e.target.split(".")
        for cut in range(2, len(parts)):
            parent = ".".join(parts[:cut])
            if layer_of(parent, layers, root) in (source_layer, target_layer):
                continue
            for pe in by_source.get(parent, []):
                if not allowed(source_layer, pe):
                    problems.append(
                        f"{e}: importing it runs {pe.path} too, where {pe.source} imports "
                        f"{pe.target} ({pe.text}), which {source_layer} may not import"
                    )
    return problems


# ------------------------------------------------------------------------------------- tests


def test_no_import_cycle_between_modules() -> None:
    modules, edges = the_package()
    cycles = find_cycles(modules, edges)
    assert not cycles, "import cycles:\n" + "\n".join(map(str, cycles))


def test_every_package_imports_only_the_layers_below_it() -> None:
    modules, edges = the_package()
    problems = layer_violations(modules, edges, LAYERS)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_simulator_uses_nothing_of_the_node_but_its_executor() -> None:
    _, edges = the_package()
    node = [
        e
        for e in edges
        if e.source.startswith(f"{ROOT}.sim") and e.target.startswith(f"{ROOT}.node")
    ]
    assert {e.target for e in node} == {f"{ROOT}.node.executor"}, "\n".join(map(str, node))


# --------------------------------------------------------------------- the checker's own teeth


def _synthetic(files: Mapping[str, str]) -> tuple[list[str], list[Edge]]:
    sources = {name: (name.replace(".", "/") + ".py", text) for name, text in files.items()}
    return list(sources), import_graph(sources, root="pkg")


def test_the_checker_finds_a_cycle_hidden_in_a_function_and_under_type_checking() -> None:
    modules, edges = _synthetic(
        {
            "pkg.a": "import pkg.b\n",
            "pkg.b": "def later():\n    from pkg import c\n",
            "pkg.c": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import X\n",
            "pkg.d": "import pkg.a\n",
        }
    )
    cycles = find_cycles(modules, edges)
    assert len(cycles) == 1
    assert cycles[0].modules == ("pkg.a", "pkg.b", "pkg.c")  # (not pkg.d, which only imports a)
    assert [(e.source, e.target, e.line) for e in cycles[0].edges] == [
        ("pkg.a", "pkg.b", 1),
        ("pkg.b", "pkg.c", 2),  # (`from pkg import c`: c is a module, so the edge is to pkg.c)
        ("pkg.c", "pkg.a", 3),
    ]
    assert str(cycles[0]).endswith("\n  pkg/c.py:3: pkg.c imports pkg.a (from pkg.a import X)")
    assert find_cycles(modules, [e for e in edges if e.source != "pkg.c"]) == []


def test_the_checker_resolves_relative_imports_and_submodules() -> None:
    source = "from . import c, helper\nfrom ..d import e\nfrom .. import d\nimport pkg.a.c as cc\n"
    edges = imports_of(
        "pkg.a.b", "pkg/a/b.py", source, {"pkg.a", "pkg.a.b", "pkg.a.c", "pkg.d"}, "pkg"
    )
    assert [(e.target, e.line) for e in edges] == [
        ("pkg.a.c", 1),
        ("pkg.a", 1),  # (helper is a name in pkg/a/__init__.py, not a module)
        ("pkg.d", 2),
        ("pkg.d", 3),
        ("pkg.a.c", 4),
    ]


def test_the_checker_finds_an_upward_import_naming_module_line_and_import() -> None:
    layers = {"top": ("low",), "low": ("base", "low.inner"), "base": (), "low.inner": ("base",)}
    modules, edges = _synthetic(
        {
            "pkg.top.cmd": "import pkg.low.x\nimport pkg.base\n",  # down, twice: fine
            "pkg.low.x": "import os\n\n\ndef f():\n    from pkg.top.cmd import main\n",  # up
            "pkg.low": "from pkg.low import x\n",  # the package's __init__, loading x
            "pkg.low.inner.y": "import pkg.base.z\n",
            "pkg.base.z": "import importlib\nimportlib.import_module('pkg.low.x')\n",  # up
            "pkg.other": "",
            "pkg.top.uses_inner": "import pkg.low.inner.y\n",
        }
    )
    problems = layer_violations(modules, edges, layers, root="pkg")
    assert problems[0] == "pkg.other belongs to no layer: add its package to LAYERS"
    assert problems[1].startswith(
        "pkg/low/x.py:5: pkg.low.x imports pkg.top.cmd (from pkg.top.cmd import main): "
        "low may import only base"
    )
    assert problems[2].startswith(
        "pkg/base/z.py:2: pkg.base.z imports pkg.low.x (importlib.import_module('pkg.low.x'))"
    )
    assert len(problems) == 3
    # A module in a nested layer loads its parent's __init__: what that imports counts.
    layers_inner_only = {**layers, "inner_user": ("low.inner",)}
    modules, edges = _synthetic(
        {
            "pkg.inner_user.m": "import pkg.low.inner.y\n",
            "pkg.low": "from pkg.low import x\n",
            "pkg.low.x": "",
            "pkg.low.inner.y": "",
        }
    )
    problems = layer_violations(modules, edges, layers_inner_only, root="pkg")
    assert problems == [
        "pkg/inner_user/m.py:1: pkg.inner_user.m imports pkg.low.inner.y (import "
        "pkg.low.inner.y): importing it runs pkg/low.py too, where pkg.low imports pkg.low.x "
        "(from pkg.low import x), which inner_user may not import"
    ]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("client", "node"),
        ("client", "cli"),
        ("protocol", "client"),
        ("protocol", "pbft"),
        ("node", "client"),
        ("node", "sim"),
        ("pbft", "crashft"),
        ("crashft", "pbft"),
        ("pbft", "protocol"),
        ("ledger", "pbft"),
        ("ledger", "protocol"),
        ("crypto", "ledger"),
        ("node.executor", "node"),
        ("node.executor", "protocol"),
        ("sim", "node"),
        ("sim", "protocol"),
    ],
)
def test_the_table_forbids_what_the_layers_forbid(source: str, target: str) -> None:
    assert target not in below(LAYERS)[source]
