"""Every command that shows stored messages renders any message: binary, non-UTF-8, non-ASCII
headers (another client may write them unescaped), 100,000 levels deep. And ``trace`` keeps a
step's tool calls under that step whatever order their records were stored in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nats.js.client import JetStreamContext
from rich.console import Console

from switchyard.cli.ops import trace_tree
from switchyard.protocol import Entry, Event, Subjects
from switchyard.protocol.headers import DLQ_CODE, DLQ_REASON, DLQ_SOURCE, DLQ_SUBJECT

CLI = str(Path(sys.executable).parent / "switchyard")


def _run(nats_url: str, subjects: Subjects, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": nats_url, "SWITCHYARD_PREFIX": subjects.prefix,
           "COLUMNS": "200"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env=env)


async def test_cli_dlq_renders_any_stored_message(
    nats_url: str, js: JetStreamContext, subjects: Subjects,
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = [b'{"id": "x"}', b"\xff\xfe\x00 binary", deep, "ünïcödé …".encode()]
    seqs = []
    for body in bodies:
        ack = await js.publish(subjects.dlq("task"), body, headers={
            DLQ_REASON: "gave up … after 3 deliveries — «bad»",  # raw non-ASCII, unescaped
            DLQ_CODE: "grant_invalid", DLQ_SUBJECT: subjects.task("x"), DLQ_SOURCE: "agent:x"})
        seqs.append(ack.seq)
    listed = _run(nats_url, subjects, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "gave up … after 3" in listed.stdout
    as_json = _run(nats_url, subjects, "dlq", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [d["reason"] for d in json.loads(as_json.stdout)] == [
        "gave up … after 3 deliveries — «bad»"] * 4
    for seq, body in zip(seqs, bodies, strict=True):
        shown = _run(nats_url, subjects, "dlq", "show", str(seq))
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        doc = json.loads(_run(nats_url, subjects, "dlq", "show", str(seq), "--json").stdout)
        assert doc["reason"] == "gave up … after 3 deliveries — «bad»"
        assert doc["bytes"] == len(body)
    kinds = [json.loads(_run(nats_url, subjects, "dlq", "show", str(s), "--json").stdout)[
        "body_encoding"] for s in seqs]
    assert kinds == ["json", "base64", "text", "text"]


def test_cli_trace_puts_tool_calls_under_their_step_whatever_the_order() -> None:
    """The tool host's record can be stored before the supervisor's dispatch record, which goes
    out beside the task; the call used to print at the top level, above its step."""
    events = [
        Event(workflow_id="w", at=1.0, source="supervisor", n=1, entries=[
            Entry(type="workflow.submitted", data={"workflow": "flow"})]),
        Event(workflow_id="w", at=1.1, source="toolhost", entries=[
            Entry(type="tool.called", data={"tool": "kb_search", "task": "w:a:1"})]),
        Event(workflow_id="w", at=1.0, source="supervisor", n=1, entries=[
            Entry(type="step.dispatched", step="a",
                  data={"task_id": "w:a:1", "attempt": 1, "role": "r"})]),
        Event(workflow_id="w", at=1.2, source="supervisor", n=2, entries=[
            Entry(type="step.ok", step="a", data={"confidence": 0.9})]),
    ]
    tree = trace_tree("w", events)
    assert len(tree.children) == 2  # submitted, and the step; no stray tool line at the top
    step = tree.children[1]
    labels = [str(c.label) for c in step.children]
    assert len(labels) == 2 and "tool.called kb_search" in labels[0] and "ok" in labels[1]
    console = Console(record=True, width=120)
    console.print(tree)
    text = console.export_text()
    assert text.index("#1 -> r") < text.index("tool.called kb_search")


def test_log_lines_lose_personal_data_and_gain_the_span_they_were_logged_in() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from switchyard.logs import redact_pii, trace_ids

    line = redact_pii(None, "info", {
        "event": "toolhost.refused", "reason": "input_value='bob@example.com' is not a customer",
        "args": {"card": "4111 1111 1111 1111", "iban": ["GB82 WEST 1234 5698 7654 32"]},
        "count": 3})
    assert line == {"event": "toolhost.refused", "reason": "input_value='[email]' is not a customer",
                    "args": {"card": "[card]", "iban": ["[iban]"]}, "count": 3}
    assert "trace_id" not in trace_ids(None, "info", {})  # outside a span: nothing added
    tracer = TracerProvider().get_tracer("t")  # a provider of its own: the global stays unset
    with tracer.start_as_current_span("s") as span:
        ids = trace_ids(None, "info", {})
    ctx = span.get_span_context()
    assert ids == {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
