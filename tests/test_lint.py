"""``ruff check`` passes on the whole tree (part of the test command, so CI runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lint_ruff_check_passes() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    res = subprocess.run([str(ruff), "check", str(ROOT)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-4000:]
