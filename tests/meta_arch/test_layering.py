"""The package's dependencies run one way: ops/layers/detr <- distill (methods and the views they
see) <- meta_arch (distillers, teachers, UniKD's absorbing stage) <- offline (store, dump).
Checked on the source (every import statement, at module level or inside functions)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# package -> d2kd packages it must not import
FORBIDDEN = {
    "distill": ("d2kd.meta_arch", "d2kd.offline", "d2kd.engine", "d2kd.tools"),
    "meta_arch": ("d2kd.offline", "d2kd.tools"),
    "detr": ("d2kd.distill", "d2kd.meta_arch", "d2kd.offline"),
}


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    folder = os.path.join(ROOT, "d2kd", package)
    bad = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            for module in _imports(os.path.join(folder, name)):
                if module.startswith(FORBIDDEN[package]):
                    bad.append(f"d2kd/{package}/{name} imports {module}")
    assert not bad, "\n".join(bad)
