"""JSON Schema for every wire message and an AsyncAPI 3 document of the subjects."""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard.protocol.headers import (
    DLQ_CODE,
    DLQ_DELIVERIES,
    DLQ_HISTORY,
    DLQ_REASON,
    DLQ_SOURCE,
    DLQ_STREAM_SEQ,
    DLQ_SUBJECT,
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    MSG_ID,
    PROTOCOL,
    TRACEPARENT,
)
from switchyard.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Decision,
    Escalation,
    Event,
    Notice,
    Outcome,
    Partial,
    Result,
    Task,
    TimerFired,
    ToolCall,
    ToolResult,
    WorkflowRequest,
)
from switchyard.protocol.subjects import Subjects

DLQ_HEADERS = (DLQ_REASON, DLQ_CODE, DLQ_SUBJECT, DLQ_SOURCE, DLQ_STREAM_SEQ, DLQ_DELIVERIES,
               DLQ_HISTORY)


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


_LINK = ("Append with Nats-Expected-Last-Subject-Sequence set to 'after' and "
         "Nats-Expected-Last-Subject-Sequence-Subject set to '{p}.journal.<workflow id>.>'; when "
         "the server answers 'wrong last sequence' (10071), read the journal's last record "
         "(direct get, last by subject) and append after it (its sequence and the SHA-256 of "
         "its bytes).")


def asyncapi(subjects: Subjects | None = None) -> dict[str, Any]:
    """AsyncAPI 3.0 document listing every subject, its message and who sends it."""
    s = subjects or Subjects()
    p = s.prefix
    channels = {
        "submit": _channel(
            f"{p}.journal.{{workflow_id}}.submit", WorkflowRequest.__name__,
            f"JetStream {s.stream('journal')}: the first record of the workflow's journal. "
            f"Append with {EXPECTED_LAST_SUBJECT_SEQ} '0' and {EXPECTED_LAST_SUBJECT_SEQ_SUBJECT} "
            f"'{p}.journal.{{workflow_id}}.>', so an id begins once; {MSG_ID} "
            "'<workflow id>:submit'.",
            workflow_id="workflow id (the request id)",
        ),
        "outcome": _channel(
            f"{p}.workflow.outcome.{{workflow_id}}", Outcome.__name__,
            f"JetStream {s.stream('outcomes')}, last message per subject kept.",
            workflow_id="workflow id (the request id)",
        ),
        "partial": _channel(
            f"{p}.partial.{{workflow_id}}", Partial.__name__,
            "Core NATS, never stored: partial output of a workflow's tasks as an agent produces "
            "it (model tokens), for a submitter watching live. At most once; the Result on the "
            "journal is what counts.",
            workflow_id="workflow id",
        ),
        "task": _channel(
            f"{p}.task.{{role}}", Task.__name__,
            f"JetStream {s.stream('tasks')} (work queue); one durable consumer per role named "
            "after the role, shared by its replicas. Ack only after the Result is stored.",
            role="agent role",
        ),
        "result": _channel(
            f"{p}.journal.{{workflow_id}}.result.{{role}}", Result.__name__,
            f"JetStream {s.stream('journal')}: an agent's result, a record of the workflow's "
            "journal. Copy the task's 'after' and 'prev' into it. " + _LINK.format(p=p)
            + f" {MSG_ID} '<task id>:result'.",
            workflow_id="workflow id", role="agent role",
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
        "decision": _channel(
            f"{p}.journal.{{workflow_id}}.decision", Decision.__name__,
            f"JetStream {s.stream('journal')}: a person's decision, a journal record. Copy the "
            "escalation's 'after' and 'prev' into it. " + _LINK.format(p=p)
            + f" {MSG_ID} '<escalation id>:decision'.",
            workflow_id="workflow id",
        ),
        "timer": _channel(
            f"{p}.journal.{{workflow_id}}.timer", TimerFired.__name__,
            f"JetStream {s.stream('journal')}: the supervisor's record that a timer came due, "
            "appended only after the record it names (never retried at the tail).",
            workflow_id="workflow id",
        ),
        "notice": _channel(
            f"{p}.journal.{{workflow_id}}.notice", Notice.__name__,
            f"JetStream {s.stream('journal')}: the supervisor's record that the bus gave up on "
            "a task (delivered max_deliver times, never acknowledged).",
            workflow_id="workflow id",
        ),
        "event": _channel(
            f"{p}.event.{{workflow_id}}", Event.__name__,
            f"JetStream {s.stream('events')}: beside the journal, the records of tool calls (and "
            "of dead letters) of one workflow, one hash chain: each record's prev is the SHA-256 "
            "of the stored record before it; append with Nats-Expected-Last-Subject-Sequence.",
            workflow_id="workflow id",
        ),
        "unattributed": _channel(
            s.unattributed, Event.__name__,
            f"JetStream {s.stream('events')}: one hash chain, like a workflow's, for records about "
            "inputs whose workflow cannot be known (an id that is not a token, an unknown "
            "workflow, an unverified grant). No workflow id can name this subject.",
        ),
        "deadLetter": {
            "address": f"{p}.dlq.{{kind}}",
            "description": (
                f"JetStream {s.stream('dlq')}: the original bytes, unchanged, with why in headers "
                f"{', '.join(DLQ_HEADERS)} (ASCII: Sy-Dlq-Reason and Sy-Dlq-Subject are JSON-string "
                "escaped without the quotes). Stream-Seq and Deliveries are absent for a tool call "
                f"(core request-reply); History only for a task given up on. {MSG_ID}: "
                "'dlq:<kind>:<stream seq>' when there is a stream sequence."
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
        "sendResult": op("send", "result", "an agent appends its result to the journal"),
        "callTool": op("send", "tool", "an agent calls a tool under its task's grant"),
        "receiveEscalation": op("receive", "humanQueue", "a reviewer claims an escalation"),
        "sendDecision": op("send", "decision", "a reviewer appends a decision to the journal"),
        "appendTimer": op("send", "timer", "the supervisor records a timer that came due"),
        "appendNotice": op("send", "notice", "the supervisor records a task the bus gave up on"),
        "receiveJournal": op("receive", "submit", "the supervisor folds every journal record"),
        "receiveOutcome": op("receive", "outcome", "a submitter reads the outcome"),
        "sendPartial": op("send", "partial", "an agent streams partial output of its task"),
        "receivePartial": op("receive", "partial", "a submitter watches partial output live"),
        "receiveEvent": op("receive", "event", "an auditor reads state changes"),
        "appendEvent": op("send", "event", "tool hosts and agents append records "
                          "(Nats-Expected-Last-Subject-Sequence: the subject's last sequence)"),
        "sendDeadLetter": op("send", "deadLetter", "a component copies an input it refused"),
    }
    headers = {
        "type": "object",
        "properties": {
            PROTOCOL: {"type": "string", "description": "protocol version, e.g. 2.0"},
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
