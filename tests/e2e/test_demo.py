"""The README's first command, as a user runs it: ``switchyard demo``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import free_port, run_cli

pytestmark = pytest.mark.e2e


async def test_demo_works_the_sample_tickets_as_labelled(tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    env.pop("SWITCHYARD_DATA_DIR", None)
    res = await run_cli("demo", "--json", env=env, cwd=tmp_path, timeout=180)
    assert res.code == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["tickets"] == 30
    assert report["counts"].get("failed", 0) == 0 and report["counts"].get("running", 0) == 0
    assert report["matched"] == 30, [r for r in report["runs"] if r["status"] != r["expect"]]
    assert report["elapsed_s"] < 60
    assert set(report["step_ms"]) == {"triage", "retrieval", "action", "compliance", "reviewer"}
    assert (tmp_path / ".switchyard" / "nats").is_dir()  # the embedded server's file storage
