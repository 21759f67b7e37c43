"""The package layout README describes, against the code: harness modules in harness/__init__.py's order import
only modules above them (no cycles), harness/fused imports only torch, triton, cudnn-frontend and flash-attn-4,
no module passes ~450 lines, prepare.py stays a thin entry point.

    uv run pytest tests/test_layout.py
"""

import ast
import re
import sys

from conftest import REPO

HARNESS = REPO / "harness"


def _order():
    """Module names in the order harness/__init__.py's docstring lists them."""
    doc = ast.get_docstring(ast.parse((HARNESS / "__init__.py").read_text()))
    return [m.group(1).rstrip("/") for m in re.finditer(r"^  (\w+/?)\s{2,}", doc, re.M)]


def _imports(path):
    """(top-level package, harness submodule or None) for every import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], a.name.split(".")[1] if a.name.startswith("harness.") else None)
                    for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "harness" and len(parts) == 1:
                out += [("harness", a.name) for a in node.names]
            else:
                out.append((parts[0], parts[1] if parts[0] == "harness" and len(parts) > 1 else None))
    return out


def test_every_module_is_listed_in_order():
    order = _order()
    files = sorted(p.stem for p in HARNESS.glob("*.py") if p.stem != "__init__") + ["fused"]
    assert sorted(order) == sorted(files)
    assert order[:3] == ["config", "settings", "util"] and order[-1] == "cli"


def test_imports_run_one_way():
    order = _order()
    upward = []
    for path in HARNESS.glob("*.py"):
        if path.stem == "__init__":
            continue
        for top, sub in _imports(path):
            if top == "harness" and sub is not None and order.index(sub) >= order.index(path.stem):
                upward.append(f"{path.stem} imports {sub}")
    assert upward == []


def test_fused_kernels_import_only_torch_triton_and_kernel_libraries():
    for path in (HARNESS / "fused").glob("*.py"):
        tops = {top for top, sub in _imports(path) if top not in sys.stdlib_module_names}
        assert tops <= {"torch", "triton", "cudnn", "flash_attn", "harness"}, (path.name, tops)
        assert all(sub in (None, "fused") for top, sub in _imports(path) if top == "harness"), path.name


def test_module_sizes():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in HARNESS.rglob("*.py")}
    assert max(sizes.values()) <= 450, sizes
    assert len((REPO / "prepare.py").read_text().splitlines()) <= 150
