"""The package layout README describes, against the code: harness modules in harness/__init__.py's order import
only modules above them (no cycles), harness/fused imports only torch, triton, cudnn-frontend and flash-attn-4,
no module passes 350 lines and no function 80, prepare.py stays a thin entry point.

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
    """A module past ~350 lines is two jobs (STYLE.md rule 16): none is listed here."""
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in HARNESS.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 350} == {}
    assert len((REPO / "prepare.py").read_text().splitlines()) <= 150


def test_function_sizes():
    """A function past ~80 lines is several steps that want names: none is listed here."""
    long = {}
    for path in HARNESS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long[f"{path.relative_to(REPO).as_posix()}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}


def test_the_two_groups_and_the_bridge_are_visible_in_the_package_docstring():
    doc = ast.get_docstring(ast.parse((HARNESS / "__init__.py").read_text()))
    runtime, rest = doc.split("Bookkeeping:", 1)[0].split("Runtime:", 1)[1], doc.split("Bookkeeping:", 1)[1]
    bookkeeping, bridge = rest.split("The bridge", 1)
    names = lambda text: re.findall(r"^  (\w+/?)\s{2,}", text, re.M)        # noqa: E731
    assert names(runtime)[:3] == ["config", "settings", "util"] and "evaluate" in names(runtime)
    assert {"decide", "ledger", "memory", "record"} <= set(names(bookkeeping))
    assert names(bridge) == ["session", "cli"]
    # runtime modules never import bookkeeping ones
    for path in HARNESS.glob("*.py"):
        if path.stem in names(runtime):
            assert not {sub for top, sub in _imports(path) if top == "harness"} & set(names(bookkeeping)), path.stem
