"""The package's import arrows (docs/training.md, "Code layout"), read from every module's source with `ast`, imports
inside functions included: a lazy import is still a dependency.

    python tests/architecture/test_import_arrows.py            # prints the room graph (room -> rooms it imports)
    python tests/architecture/test_import_arrows.py --modules  # the module graph
"""

from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runs as a script too
PACKAGE = "oq2vl_jax"

# room -> rooms it must never import (a room is a subpackage, or a top-level module such as checkpoint_io)
FORBIDDEN = {
    "models": {"data", "training", "convert", "inference", "evals", "pretrained", "text", "checkpoint_io", "demo"},
    "data": {"models", "training", "convert", "pretrained", "demo", "evals", "inference"},
    "convert": {"training", "data", "demo"},
    "training": {"convert"},
    "inference": {"training", "convert", "demo"},  # released models reach inference through `convert import`
    "pretrained": {"convert", "training", "data", "demo"},  # shared by training and convert: depends on neither
    "evals": {"training"},  # the training hook lives in training/ and calls evals, never the other way
}
# rooms that may import only these rooms (besides themselves)
ONLY = {
    "text": {"errors", "storage"},  # a tokenizer directory may be in a bucket (read through a local copy)
    "storage": {"errors"},  # local paths and buckets: the floor every room that reads user files stands on
    "errors": set(),
    "batch": {"errors"},
}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def modules() -> dict[str, str]:
    """Every module of the package: dotted name -> file path."""
    found = {}
    for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found[os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    return found


def imports_of(node: ast.ImportFrom, path: str, module: str, known: dict[str, str], only=None):
    """(imported module, imported name or None) for the names of one `from ... import ...` of ours: `from a.b import
    c` names the module a.b.c when that is a module, else the name c of a.b."""
    base = node.module or ""
    if node.level:  # relative import
        package = (module if path.endswith("__init__.py") else module.rpartition(".")[0]).split(".")
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != PACKAGE:
        return
    for alias in node.names if only is None else [only]:
        sub = f"{base}.{alias.name}"
        yield (sub, None) if sub in known else (base, alias.name)


def imports(path: str, module: str, known: dict[str, str]):
    """(imported module, imported name or None) for every import of ours in one file."""
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            yield from imports_of(node, path, module, known)


def graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports."""
    known = modules()
    return {m: {target for target, _ in imports(p, m, known) if target != m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def private_uses() -> list[str]:
    """`_private` names of one module used by another: imported by name, or read as `module._name` through an
    imported module (dunders are not private)."""
    known, found = modules(), []
    is_private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    for module, path in known.items():
        tree = ast.parse(open(path).read(), path)
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    target, name = next(imports_of(node, path, module, known, alias), (None, None))
                    if target is None:
                        continue
                    if name is None:
                        aliases[alias.asname or alias.name] = target
                    elif is_private(name) and target != module:
                        found.append(f"{module} imports {target}.{name}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in known})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and is_private(node.attr) and aliases[node.value.id] != module):
                found.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def room_graph(edges: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """room -> {room it imports: number of module-level arrows}."""
    rooms: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for source, targets in edges.items():
        for target in targets:
            if room(source) != room(target):
                rooms[room(source)][room(target)] += 1
    return rooms


def test_no_forbidden_import_arrows():
    bad = []
    for source, targets in graph().items():
        for target in targets:
            src, dst = room(source), room(target)
            if src == dst or not dst:
                continue
            if dst in FORBIDDEN.get(src, ()) or (src in ONLY and dst not in ONLY[src]):
                bad.append(f"{source} -> {target}")
    assert not bad, bad


def test_no_import_circle():
    assert not cycles(graph())


def test_no_private_name_is_used_by_another_module():
    assert not private_uses()


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def main(argv: list[str]) -> int:
    edges = graph()
    if "--modules" in argv:
        for source in sorted(edges):
            print(f"{source} -> {', '.join(sorted(edges[source])) or '-'}")
    else:
        rooms = room_graph(edges)
        for source in sorted({room(m) or m for m in edges}):
            targets = rooms.get(source, {})
            print(f"{source or PACKAGE}: {', '.join(f'{t} ({n})' for t, n in sorted(targets.items())) or '-'}")
    circles = cycles(edges)
    print(f"{len(edges)} modules, {sum(len(t) for t in edges.values())} arrows, {len(circles)} import circles")
    for circle in circles:
        print("  circle:", " -> ".join(circle))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
