"""Parts a test needs that a machine may lack (podman, the llama.cpp server): skip with the
reason, unless ``SWITCHYARD_TESTS_REQUIRE`` names the part (CI does), which makes it a failure."""

from __future__ import annotations

import os

import pytest


def require(part: str, missing: str) -> None:
    """Skip, saying what is missing, unless ``SWITCHYARD_TESTS_REQUIRE`` names ``part``: then a
    machine that lacks it fails the run (CI installs every part)."""
    required = {p.strip() for p in os.environ.get("SWITCHYARD_TESTS_REQUIRE", "").split(",")}
    if part in required:
        pytest.fail(f"{part} is required here (SWITCHYARD_TESTS_REQUIRE) but {missing}")
    pytest.skip(f"needs {part}: {missing}")
