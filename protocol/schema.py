"""JSON Schema for every wire message and an AsyncAPI 3 document of the subjects."""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard.protocol.headers import MSG_ID, PROTOCOL, TRACEPARENT
from switchyard.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Decision,
    Escalation,
    Event,
    Outcome,
    Result,
    Task,
    ToolCall,
    ToolResult,
    WorkflowRequest,
)
from switchyard.protocol.subjects import Subjects


def message_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema (2020-12) per message type, keyed by its name."""
    out: dict[str, dict[str, Any]] = {}
    for kind in MESSAGE_TYPES:
        schema = msgspec.json.schema(kind)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = kind.__name__
        out[kind.__name__] = schema
    return out


def _channel(address: str, message: str, description: str, **params: str) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }
    if params:
        channel["parameters"] = {k: {"description": v} for k, v in params.items()}
    return channel


def asyncapi(subjects: Subjects | None = None) -> dict[str, Any]:
    """AsyncAPI 3.0 document listing every subject, its message and who sends it."""
    s = subjects or Subjects()
    p = s.prefix
    channels = {
        "submit": _channel(
            s.submit, WorkflowRequest.__name__,
            f"JetStream {s.stream('workflows')}. Set {MSG_ID} to the request id (deduplicated).",
        ),
        "outcome": _channel(
            f"{p}.workflow.outcome.{{workflow_id}}", Outcome.__name__,
            f"JetStream {s.stream('outcomes')}, last message per subject kept.",
            workflow_id="workflow id (the request id)",
        ),
        "task": _channel(
            f"{p}.task.{{role}}", Task.__name__,
            f"JetStream {s.stream('tasks')} (work queue); one durable consumer per role named "
            "after the role, shared by its replicas. Ack only after the Result is stored.",
            role="agent role",
        ),
        "result": _channel(
            f"{p}.result.{{role}}", Result.__name__,
            f"JetStream {s.stream('results')}. Set {MSG_ID} to '<task id>:result'.",
            role="agent role",
        ),
        "tool": _channel(
            f"{p}.tool.{{tool}}.{{caller}}", ToolCall.__name__,
            "Core NATS request-reply; the reply is a ToolResult. Carries the task's grant, whose "
            "role must be the caller token (the secured bus lets only that role publish there).",
            tool="tool name", caller="the calling agent's role",
        ),
        "humanQueue": _channel(
            s.human_queue, Escalation.__name__,
            f"JetStream {s.stream('human')} (work queue); reviewers pull and ack.",
        ),
        "humanDecision": _channel(
            s.human_decision, Decision.__name__,
            f"JetStream {s.stream('human')}. Set {MSG_ID} to the escalation id.",
        ),
        "event": _channel(
            f"{p}.event.{{workflow_id}}", Event.__name__,
            f"JetStream {s.stream('events')}: the audit trail, one hash chain per workflow: each "
            "record's prev is the SHA-256 of the stored record before it; append with "
            "Nats-Expected-Last-Subject-Sequence.",
            workflow_id="workflow id",
        ),
        "deadLetter": {
            "address": f"{p}.dlq.{{kind}}",
            "description": (
                f"JetStream {s.stream('dlq')}: the original bytes, unchanged, with the reason in "
                "headers Sy-Dlq-Reason, Sy-Dlq-Code, Sy-Dlq-Subject, Sy-Dlq-Stream-Seq."
            ),
            "parameters": {"kind": {"description": "task, result, tool, submit, decision"}},
            "messages": {"DeadLetter": {"payload": {"description": "original message bytes"}}},
        },
    }
    tool_result = {"$ref": f"#/components/messages/{ToolResult.__name__}"}
    channels["tool"]["messages"][ToolResult.__name__] = tool_result

    def op(action: str, channel: str, summary: str) -> dict[str, Any]:
        return {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, "summary": summary}

    operations = {
        "submitWorkflow": op("send", "submit", "a client submits a workflow run"),
        "receiveTask": op("receive", "task", "an agent takes a task for its role"),
        "sendResult": op("send", "result", "an agent publishes its result"),
        "callTool": op("send", "tool", "an agent calls a tool under its task's grant"),
        "receiveEscalation": op("receive", "humanQueue", "a reviewer claims an escalation"),
        "sendDecision": op("send", "humanDecision", "a reviewer decides"),
        "receiveOutcome": op("receive", "outcome", "a submitter reads the outcome"),
        "receiveEvent": op("receive", "event", "an auditor reads state changes"),
    }
    headers = {
        "type": "object",
        "properties": {
            PROTOCOL: {"type": "string", "description": "protocol version, e.g. 1.0"},
            TRACEPARENT: {"type": "string", "description": "W3C trace context"},
            MSG_ID: {"type": "string", "description": "JetStream deduplication id"},
        },
    }
    schemas = message_schemas()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchyard protocol",
            "version": PROTOCOL_VERSION,
            "description": "Subjects and messages between supervisor, agents, tool hosts and people.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                name: {"name": name, "headers": headers, "payload": schema}
                for name, schema in schemas.items()
            }
        },
    }
