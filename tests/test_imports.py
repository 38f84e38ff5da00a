"""The project's modules import each other without cycles.

Why: a cycle ties modules that should stand alone (the simulator to the CLI, a deployed policy
to the training code) and breaks at import time as soon as an import moves to module level.
The graph is built from the source with ``ast``, over the packages ``runtime``, ``controllers``,
``policy_env`` and ``training``. Every import counts, at module level and inside functions
(a lazy import is still a dependency, only a deferred one), except:

- imports under ``if TYPE_CHECKING:`` (never executed);
- imports under ``if __name__ == "__main__":`` (run only when the file is the program, as a
  module other than the one importers load);
- the implicit import of a module's parent package (``controllers.knobs`` does not depend on
  ``controllers/__init__.py``, which may import its submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "controllers", "policy_env", "training")


def project_modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _skipped(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` or ``if __name__ == "__main__":``."""
    t = node.test
    if isinstance(t, ast.Name) and t.id == "TYPE_CHECKING":
        return True
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators))


def _known(name: str, mods: set[str]) -> str | None:
    """The project module ``name`` loads: itself, else its longest prefix that is one."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def dependencies(tree: ast.AST, package: str, mods: set[str]) -> set[str]:
    """Project modules the source's imports load. ``from a import b`` depends on ``a.b`` if that
    is a module (``a`` is then only its parent package), else on ``a``."""
    deps: set[str | None] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _skipped(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            deps.update(_known(a.name, mods) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                full = f"{base}.{a.name}"
                deps.add(full if full in mods else _known(base, mods))
        stack.extend(ast.iter_child_nodes(node))
    deps.discard(None)
    return deps  # type: ignore[return-value]


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        graph[mod] = dependencies(ast.parse(path.read_text()), package, set(mods)) - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) + ")"
                       for c in found)
    assert not found, f"import cycles: {detail}"


def test_the_graph_sees_lazy_imports_and_finds_a_cycle() -> None:
    """The checker itself: a cycle made only of imports inside functions is found, and the
    exempt blocks are not edges."""
    graph = import_graph()
    assert "runtime.real.profile" in graph["runtime.cli"]  # imported inside build_parser()
    assert "training.train" not in graph["training.sweep"]  # only under __name__ == "__main__"
    graph["runtime.real.profile"] = graph["runtime.real.profile"] | {"runtime.cli"}
    assert cycles(graph) == [["runtime.cli", "runtime.real.profile"]]


def test_relative_and_from_imports_resolve() -> None:
    tree = ast.parse("from . import codec\nfrom .env import SpecControlEnv\nimport runtime.sim\nimport numpy\n"
                     "from controllers import make_controller\nif TYPE_CHECKING:\n    import runtime.cli\n")
    mods = set(project_modules())
    assert dependencies(tree, "policy_env", mods) == {"policy_env.codec", "policy_env.env", "runtime.sim", "controllers"}


def _external_imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (at any depth, lazily or not)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_knows_no_backend_and_the_backends_not_each_other() -> None:
    """Issue 10's split: the protocol core imports nothing of a clock's machinery (an event heap,
    asyncio), torch or gRPC, and neither backend (``runtime.sim``, ``runtime.real``) imports the
    other, so each is the core plus its own way of moving time, work and messages."""
    core = ROOT / "runtime" / "core.py"
    assert not _external_imports(core) & {"heapq", "asyncio", "torch", "grpc", "transformers"}
    assert not {d for d in import_graph()["runtime.core"] if d.startswith(("runtime.sim", "runtime.real"))}
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("runtime.sim"):
            assert not {d for d in deps if d.startswith("runtime.real")}, mod
        if mod.startswith("runtime.real"):
            assert not {d for d in deps if d == "runtime.sim" or d.startswith("runtime.sim.")}, mod
