"""The shape of the package: no import cycles, TensorFlow-free modules, short functions."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "bert_rec")


def _modules():
    """{module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(module, path, modules):
    """The package modules ``module`` imports, at module level or inside functions."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:  # "from . import x" names a module; "from .x import f" not
                name = f"{base}.{alias.name}"
                targets.add(name if name in modules else base)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            targets.add(node.module)
    targets.discard(module)
    return {t for t in targets if t in modules}


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    graph.pop("bert_rec")  # the package's lazy attribute table points at everything
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", [
    "bert_rec", "bert_rec.data", "bert_rec.text", "bert_rec.units", "bert_rec.explain",
    "bert_rec.config", "bert_rec.evaluation", "bert_rec.serving", "bert_rec.retrieval",
    "bert_rec.cli", "bert_rec.commands", "bert_rec.utils.atomic", "bert_rec.utils.encode_cache",
    "bert_rec.settings", "bert_rec.report", "bert_rec.report_svg", "bert_rec.utils.terminal"])
def test_module_loads_no_tensorflow(module):
    code = (f"import sys, {module}; bad = [m for m in ('tensorflow', 'tf_keras', 'bert4keras') "
            f"if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-500:]


def test_functions_and_classes_stay_short():
    """No function over 60 lines, no class over 250 (the package; scripts have flat tables)."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = 250 if isinstance(node, ast.ClassDef) else 60
                size = node.end_lineno - node.lineno + 1
                if size > limit:
                    long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} "
                                f"({size} lines)")
    assert not long, long
