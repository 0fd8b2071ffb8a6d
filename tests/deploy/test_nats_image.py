"""The stack's processes on the host against the NATS image ``compose.yaml`` pins, started in a
container by testcontainers (``NatsContainer``) through podman's Docker-compatible API: the
demo's 30 tickets end as labelled on that server, with its streams and buckets provisioned by
the components themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from switchyard.demo import run_demo, sample_tickets
from switchyard.settings import Settings
from switchyard.stack import LocalStack

from .conftest import nats_image, run

pytestmark = [
    pytest.mark.deploy, pytest.mark.timeout(300),
    # testcontainers' own NatsContainer still waits with its own deprecated helpers
    pytest.mark.filterwarnings("ignore::DeprecationWarning:testcontainers"),
]


@pytest.fixture
def nats_container(docker_socket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from testcontainers.community.nats import NatsContainer
    from testcontainers.core.config import ConnectionMode, testcontainers_config

    monkeypatch.setenv("DOCKER_HOST", docker_socket)
    # no reaper image here: the fixture removes the container itself; and the container's port
    # is reached on the host's loopback, wherever testcontainers guesses it runs
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    monkeypatch.setattr(testcontainers_config, "connection_mode_override", ConnectionMode.docker_host)
    monkeypatch.setattr(testcontainers_config, "tc_host_override", "127.0.0.1")
    with NatsContainer(nats_image(), jetstream=True) as container:
        yield container.nats_uri()


async def test_stack_works_on_the_pinned_nats_image(
    nats_container: str, tmp_path: Path, podman: str,
    record_property: Callable[[str, object], None],
) -> None:
    assert nats_container.startswith("nats://127.0.0.1:")
    settings = Settings(nats_url=nats_container, data_dir=tmp_path / "data", log_level="warning")
    async with LocalStack(settings) as stack:
        assert stack.nats is None  # the container's server answered: none of ours started
        report = await run_demo(settings, sample_tickets(), timeout=120, connect=True)
    assert report.ok, report.counts
    assert report.matched == 30, [r for r in report.runs if not r.matched]
    stand_in = await run(podman, "image", "inspect", "--format",
                         '{{ index .Labels "org.switchyard.stand-in" }}', nats_image(), timeout=60)
    made_here = stand_in.check().stdout.strip() not in ("", "<no value>")
    record_property("report", f"30/30 on {nats_image()}"
                              + (" (a stand-in built by deploy/podman/images.sh)" if made_here else ""))
