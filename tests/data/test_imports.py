"""The data modules import each other without a cycle, in any order, and every name stays where it was."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fsgan_fast.data

DATA_DIR = Path(fsgan_fast.data.__file__).parent
MODULES = sorted(f"fsgan_fast.data.{p.stem}" for p in DATA_DIR.glob("*.py") if p.stem != "__init__")


def _data_imports(path: Path) -> set[str]:
    """fsgan_fast.data modules that ``path`` imports anywhere, lazily inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


def test_no_import_cycle_between_data_modules():
    """A function-level import only hides a cycle: every edge counts."""
    graph = {m: _data_imports(DATA_DIR / f"{m.rsplit('.', 1)[1]}.py") for m in MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        for n in sorted(graph[m]):
            if n in path or n == m:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n) :] + [m, n] if n in path else [m, n]))
            if n not in done:
                visit(n, path + [m])
        done.add(m)

    for m in MODULES:
        visit(m, [])
    assert "fsgan_fast.data.types" in graph and not graph["fsgan_fast.data.types"], "types imports no data module"


# Each data module imported first, with a stub package so that fsgan_fast/data/__init__.py (which fixes
# one order) does not run first; fsgan_fast and torch are imported once, the data modules afresh each time.
EACH_ALONE = """
import importlib, sys, types
import fsgan_fast
for name in {modules!r}:
    for key in [k for k in sys.modules if k.startswith("fsgan_fast.data")]:
        del sys.modules[key]
    stub = types.ModuleType("fsgan_fast.data")
    stub.__path__ = [{path!r}]
    sys.modules["fsgan_fast.data"] = stub
    importlib.import_module(name)
print("ok")
"""

BUILTIN_FIRST = """
from fsgan_fast.data.builtin import builtin_classes
from fsgan_fast.data.classes import DatasetError, ImageClasses
data = builtin_classes(size=8, per_class=2)
assert isinstance(data, ImageClasses) and data.images.shape == (32, 3, 8, 8)
print("ok")
"""


def test_each_module_imports_first_in_a_fresh_interpreter():
    codes = [EACH_ALONE.format(modules=MODULES, path=str(DATA_DIR)), BUILTIN_FIRST]
    # side by side: each interpreter spends most of its time importing torch
    procs = [subprocess.Popen([sys.executable, "-c", c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in codes]
    for code, proc in zip(codes, procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "ok", f"{code}failed:\n{err[-2000:]}"


def test_names_importable_from_where_they_were():
    from fsgan_fast.data import DatasetError, ImageClasses
    from fsgan_fast.data import classes, types

    assert classes.ImageClasses is ImageClasses is types.ImageClasses
    assert classes.DatasetError is DatasetError is types.DatasetError
    assert {"DatasetError", "ImageClasses"} <= set(classes.__all__) and set(fsgan_fast.data.__all__) >= {
        "DatasetError",
        "ImageClasses",
        "builtin_classes",
        "load_classes",
    }
