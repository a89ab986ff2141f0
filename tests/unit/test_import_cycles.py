"""The sockvisor package has no import cycle.

Every `import` and `from ... import` in every module under sockvisor/ counts:
at module level, inside functions (a function-level import only hides a cycle
until the function runs), and under `if TYPE_CHECKING:` (a type-only import is
still knowledge of the module above: a command annotated with `Supervisor` knows
the arbiter).  Commands, the control server and the console see the supervisor
through the narrow `sockvisor.control.host.Host`; reconfigure through its own
`Host`.  Modules loaded by name at run time (the command files, by
`load_commands`) are not edges: nothing imports them.

A cycle found is printed as a path, module -> module -> ... -> module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sockvisor

PACKAGE = Path(sockvisor.__file__).parent

# Imports that close a cycle in modules being reshaped elsewhere, each with why
# it is tolerated for now and whose it is: (importer, imported) -> reason.  Left
# out of the graph, so that any *other* cycle still fails.
KNOWN_EDGES: dict[tuple[str, str], str] = {}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The sockvisor modules `name` imports, wherever in the file."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import
            # name` the module mod.
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known
                          else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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


def a_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle through the component, as `a -> b -> ... -> a`."""
    members = set(component)
    start = component[0]
    # Breadth-first from start's successors back to start, inside the component.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = previous[node]
                    return " -> ".join([start, *reversed(path[1:]), start])
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return " -> ".join(component)


def test_known_edges_still_exist():
    """An exception outlives its reason only until the import goes."""
    graph = import_graph()
    stale = [edge for edge in KNOWN_EDGES if edge[1] not in graph.get(edge[0], ())]
    assert not stale, f"remove from KNOWN_EDGES: {stale}"


def test_the_graph_sees_function_level_and_type_checking_imports():
    """The walker itself: a cycle hidden in a function or behind TYPE_CHECKING
    is found (supervisor's control server is imported inside a function)."""
    graph = import_graph()
    assert "sockvisor.control.server" in graph["sockvisor.supervisor"]
    assert "sockvisor.sockets" in graph["sockvisor.control.commands.listsockets_cmd"]
    assert "sockvisor.config" in graph["sockvisor.control.access"]   # TYPE_CHECKING
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(fake) == [["a", "b", "c"]]
    assert a_path(fake, ["a", "b", "c"]) == "a -> b -> c -> a"


def test_no_import_cycle():
    graph = import_graph()
    for importer, imported in KNOWN_EDGES:
        graph[importer].discard(imported)
    found = cycles(graph)
    assert not found, "import cycles in sockvisor/:\n" + "\n".join(
        f"{a_path(graph, component)}   (all of: {', '.join(component)})"
        for component in found)
