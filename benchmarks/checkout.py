"""The checkout the benchmarks come from: dropin, chaos and batch start processes with helpers from its tests/.

``python -m benchmarks.X`` from any folder finds ``benchmarks`` through the
editable install, but not ``tests``, which is not installed. :func:`use_tests`
puts the checkout's root on ``sys.path`` (and :func:`child_env` on a child's
``PYTHONPATH``), so those benchmarks run from any folder, not only the root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def use_tests() -> None:
    """Make the checkout's ``tests`` package importable; SystemExit naming the folder when it has none."""
    if not (ROOT / "tests" / "procs.py").is_file():
        raise SystemExit(f"this benchmark needs the repository checkout's tests/ folder, not found in {ROOT}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def child_env() -> dict[str, str]:
    """Environment entries that let a child process import ``tests`` (``python -m tests.X``)."""
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(ROOT) if not current else f"{ROOT}{os.pathsep}{current}"}
