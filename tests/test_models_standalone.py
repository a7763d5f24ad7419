"""models/ stands alone: none of its modules imports producer/ or worker/, at import time or inside a function.

Both sides use models/ (the worker runs the IR it exports, the producer writes the phantoms it generates), so an
import the other way would be a cycle. Two checks: every import statement in models/ (including those inside
functions, where the last such import hid), and a fresh interpreter that imports every models/ module and builds
the default INT8 calibration slices with producer and worker made unimportable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
FORBIDDEN = ("producer", "worker")

BLOCKED_RUN = """
import importlib, pkgutil, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError(f"models/ imported {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
import models
names = sorted(m.name for m in pkgutil.iter_modules(models.__path__, "models."))
for name in names:
    importlib.import_module(name)
from models.quantize import calibration_images
images, described = calibration_images([], 6)
assert len(images) == 6 and "models.phantoms" in described, described
assert not any(m.split(".")[0] in {forbidden!r} for m in sys.modules), sorted(sys.modules)
print(" ".join(names))
"""


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_models_module_names_producer_or_worker():
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(MODELS.glob("*.py"))
        for line, name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not offending, offending


def test_every_models_module_imports_with_producer_and_worker_unimportable():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN.format(forbidden=set(FORBIDDEN))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(result.stdout.split())
    expected = {f"models.{path.stem}" for path in MODELS.glob("*.py") if path.stem != "__init__"}
    assert imported == expected, (imported, expected)
