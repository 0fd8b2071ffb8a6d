"""``switchyard nats-config --cluster N``: the generated node configs start real nats-servers that
form one JetStream cluster under the same authorization as the single server's config."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import nats
import nkeys
import pytest

from switchyard import credentials
from switchyard.natsd import NatsCluster, free_ports
from switchyard.protocol import Subjects
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import provision
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import Bucket, Stream
from switchyard.supervisor import authz
from switchyard.supervisor.policy import load_policy

CLI = str(Path(sys.executable).parent / "switchyard")
pytestmark = pytest.mark.timeout(90)


def test_nats_config_cluster_refuses_one_and_two_nodes(tmp_path: Path) -> None:
    for n in (1, 2):
        res = subprocess.run([CLI, "nats-config", "--out", str(tmp_path), "--cluster", str(n)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "needs 3 or more nodes" in res.stderr
        with pytest.raises(ConfigError, match="use 3 or more"):
            authz.cluster_configs("", nodes=n, store_dir=tmp_path)
    assert not list(tmp_path.glob("node-*.conf"))


def test_nats_config_cluster_writes_one_config_per_node(tmp_path: Path) -> None:
    res = subprocess.run([CLI, "nats-config", "--out", str(tmp_path), "--cluster", "3",
                          "--port", "5222", "--cluster-port", "7222",
                          "--cluster-host", "nats-{i}.nats"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    auth = (tmp_path / "auth.conf").read_text()
    for i in (1, 2, 3):
        text = (tmp_path / f"node-{i}.conf").read_text()
        assert f"server_name: node-{i}\n" in text and f"listen: nats-{i}.nats:{5221 + i}" in text
        assert f"listen: nats-{i}.nats:{7221 + i}" in text and "sync_interval: always" in text
        assert text.endswith(auth)  # the very same authorization on every node
        assert all(f"nats-{j}.nats:{7221 + j}" in text for j in (1, 2, 3))
        assert (tmp_path / f"node-{i}.conf").stat().st_mode & 0o077 == 0  # the routes' password
    assert "NATS_URL=nats://nats-1.nats:5222,nats://nats-2.nats:5223,nats://nats-3.nats:5224" in \
        res.stdout.replace("\n", "")


async def test_cluster_configs_form_a_jetstream_cluster_under_the_authorization(
    tmp_path: Path,
) -> None:
    s = Subjects("sy")
    creds = credentials.Credentials(tmp_path / "creds")
    ids = authz.identities(load_policy("support"), ["triage"], s)
    auth = authz.authorization(ids, creds.public_key)
    configs = authz.cluster_configs(
        auth, nodes=3, store_dir=tmp_path / "js", port=(base := free_ports(6)),
        cluster_port=base + 3, route_user="route",
        route_password=creds.route_password())
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    async with NatsCluster([tmp_path / name for name in configs],
                           connect_options=creds.connect_options(authz.ADMIN)) as cluster:
        admin = await nats.connect(servers(cluster.urls), **creds.connect_options(authz.ADMIN))
        try:
            js = admin.jetstream(timeout=10.0)
            await provision(js, s, replicas=3)  # the admin may provision, at R3
            info = await js.stream_info(s.stream(Stream.JOURNAL))
            assert info.config.num_replicas == 3 and not info.config.allow_direct
            assert info.cluster is not None and info.cluster.name == authz.CLUSTER_NAME
            assert info.cluster.leader and len(info.cluster.replicas or []) == 2
            kv = await js.stream_info(f"KV_{s.bucket(Bucket.TOOL_LEDGER)}")
            assert kv.config.num_replicas == 3
        finally:
            await admin.close()
        # an identity may do only what it is allowed, on every node alike
        agent = await nats.connect(cluster.nodes[2].url,
                                   **creds.connect_options(authz.agent_identity("triage")))
        try:
            with pytest.raises(Exception):  # noqa: B017 - a permissions violation, any form
                await agent.jetstream(timeout=2.0).delete_stream(s.stream(Stream.JOURNAL))
        finally:
            await agent.close()
        stranger = credentials.Credentials(tmp_path / "other")  # a key the config does not know
        for node in cluster.nodes:
            assert await _connect_answer(node.port, stranger, authz.ADMIN) == \
                b"-ERR 'Authorization Violation'"
            assert await _connect_answer(node.port, creds, authz.ADMIN) == b"PONG"


async def _connect_answer(port: int, creds: credentials.Credentials, identity: str) -> bytes:
    """The server's answer to CONNECT (signed with ``identity``'s key from ``creds``) and PING,
    spoken by hand: nats.py leaves its socket open when a connect is refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            info = json.loads((await reader.readline()).split(b" ", 1)[1])
            key = nkeys.from_seed(bytearray(creds.seed_file(identity).read_bytes().strip()))
            sig = base64.urlsafe_b64encode(key.sign(info["nonce"].encode())).rstrip(b"=")
            connect = {"nkey": creds.public_key(identity), "sig": sig.decode(), "verbose": False,
                       "pedantic": False, "protocol": 1}
            writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            await writer.drain()
            return (await reader.readline()).strip()
    finally:
        writer.close()
        await writer.wait_closed()
