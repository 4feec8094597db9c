"""The package's forbidden import arrows (docs/training.md, "Code layout"), checked on every module's source, imports
inside functions included: a lazy import is still a dependency."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "oq2vl_jax")

# room -> rooms it must never import
FORBIDDEN = {
    "models": {"data", "training", "convert", "inference", "evals", "pretrained", "tokens", "checkpoint_io"},
    "data": {"models", "training", "convert", "pretrained"},
    "convert": {"training", "data"},
    "training": {"convert"},
    "inference": {"training", "convert"},  # released models reach inference through `convert import`
    "pretrained": {"convert", "training", "data"},  # shared by training and convert: depends on neither
    "tokens": {"data", "training", "convert", "pretrained", "models"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: str, module: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # `from oq2vl_jax import tokens`


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield path, rel.removesuffix(".__init__")


def test_no_forbidden_import_arrows():
    bad = []
    for path, module in _modules():
        room = _room(module)
        for imported in _imports(path, module):
            if imported.startswith("oq2vl_jax.") and _room(imported) in FORBIDDEN.get(room, ()):
                bad.append(f"{module} -> {imported}")
    assert not bad, bad
