"""``mypy --strict`` passes on the whole distribution (part of the test command, so CI runs it).

Type checkers do not run the editable install's import hook, so the test lays out the package as
the wheel would (``switchyard/`` with ``protocol``, ``agents``, ``supervisor`` and ``tools`` inside
it) as a tree of symlinks in a temporary directory, and checks that.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_types_mypy_strict_passes(tmp_path: Path) -> None:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    top = tmp_path / "src" / "switchyard"
    top.mkdir(parents=True)
    for entry in (ROOT / "switchyard").iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        if name != "switchyard":
            (top / name.split(".", 1)[1]).symlink_to(ROOT / folder)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "switchyard"],
        capture_output=True, text=True, timeout=570, cwd=tmp_path / "src",
        env={"MYPYPATH": str(tmp_path / "src"), "PATH": str(Path(sys.executable).parent)},
    )
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "Success: no issues found" in res.stdout
