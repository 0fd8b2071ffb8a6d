"""Every package folder must be listed in pyproject: an unlisted one is left out of the wheel
while the editable install still imports it (tests pass, the release breaks)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packaging_lists_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_packaging_ships_data_files() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = config["package-data"]
    assert "workflows/*.yaml" in data["switchyard.supervisor"]
    assert "data/*" in data["switchyard.tools.builtin"]
    assert "data/*" in data["switchyard.agents"]
    assert "data/*" in data["switchyard"]


def test_packaging_wheel_has_one_namespace_and_its_data(tmp_path: Path) -> None:
    """Build the real wheel: everything under ``switchyard/``, data included, no bare names."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("switchyard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("switchyard-")}
    assert tops == {"switchyard"}
    for path in ("switchyard/protocol/codec.py", "switchyard/tools/builtin/kb.py",
                 "switchyard/supervisor/workflows/support.yaml",
                 "switchyard/tools/builtin/data/kb.yaml", "switchyard/agents/data/tickets.csv",
                 "switchyard/data/sample_tickets.yaml", "switchyard/agents/py.typed",
                 "switchyard/agents/data/models.yaml", "switchyard/agents/prompts/triage.md",
                 "switchyard/agents/llm/action.py", "switchyard/agents/model/routing.py",
                 "switchyard/supervisor/workflows/support-llm.yaml"):
        assert path in names, path
