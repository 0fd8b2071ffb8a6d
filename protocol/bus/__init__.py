"""The shared I/O every component needs, and nothing else: the component lifecycle, the publisher,
the pull consumer, the audit writer, dead letters, provisioning and fault firing. Acts only through
a connection it is given or opens from a config; never reads the environment."""

from switchyard.protocol.bus.audit import AuditLog
from switchyard.protocol.bus.component import Component, ComponentConfig, ComponentState, servers
from switchyard.protocol.bus.consumer import PullConsumer
from switchyard.protocol.bus.dead_letters import DeadLetters
from switchyard.protocol.bus.faults import Faults
from switchyard.protocol.bus.provision import ensure_streams, kv_write, open_bucket, provision
from switchyard.protocol.bus.publisher import PubAck, Publisher

__all__ = [
    "AuditLog",
    "Component",
    "ComponentConfig",
    "ComponentState",
    "DeadLetters",
    "Faults",
    "PubAck",
    "Publisher",
    "PullConsumer",
    "ensure_streams",
    "kv_write",
    "open_bucket",
    "provision",
    "servers",
]
