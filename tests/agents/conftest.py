"""The model tests' OpenAI-compatible stub, served once for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agents.openai_stub import Stub, StubServer


@pytest.fixture(scope="session")
def stub_server() -> Iterator[StubServer]:
    server = StubServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stub(stub_server: StubServer) -> Stub:
    """The stub with nothing scripted, nothing answered, no requests recorded."""
    stub_server.stub.reset()
    return stub_server.stub
