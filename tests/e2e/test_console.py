"""The web console in a real browser: Debian's Chromium, driven by Playwright (never a downloaded
browser), against ``switchyard console`` as a process of a secured stack, connected as its own
NATS identity (``web-console``), whose server logs no permission violation.

Each page is saved as a screenshot under ``.artifacts/console/``."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest

from switchyard.cli.ops import run_events
from switchyard.client import SwitchyardClient
from switchyard.console.users import Users
from switchyard.natsd import free_ports
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.messages import Entry
from switchyard.protocol.subjects import Bucket
from switchyard.settings import Settings
from switchyard.stack import LocalStack
from switchyard.supervisor import authz
from switchyard.supervisor.escalation import EscalationIndex
from tests.parts import require

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
# as the machine's notes say: no background networking on a closed network, a fresh profile
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


class Stack:
    def __init__(self, stack: LocalStack, url: str, client: SwitchyardClient) -> None:
        self.stack, self.url, self.client = stack, url, client


@pytest.fixture(scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        require("chromium", "Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        require("chromium", "playwright is not installed (pip install -e '.[dev]')")
    data: Path = tmp_path_factory.mktemp("console")
    nats_port = free_ports(11)  # the server, the console, and /metrics of 9 processes
    port = nats_port + 1
    settings = Settings(nats_url=f"nats://127.0.0.1:{nats_port}", data_dir=data,
                        prefix=f"c{uuid.uuid4().hex[:6]}", metrics_port=nats_port + 2)
    for name in ("ann", "bob"):
        Users(settings.console_users_file).add(name, PASSWORD)
    env = {"SWITCHYARD_CONSOLE_PORT": str(port), "SWITCHYARD_PREFIX": settings.prefix}
    async with LocalStack(settings, secure=True, console=True, env=env) as stack:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await http.get(f"{url}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        nc = await nats.connect(servers(stack.url), **stack.connect_options(authz.CONSOLE))
        try:
            yield Stack(stack, url, SwitchyardClient(nc, settings.subjects))
        finally:
            await nc.close()
        assert stack.violations() == []  # the console's identity sufficed for all of it


@pytest.fixture(scope="module")
async def browser(console: Stack) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def signed_in(browser: Any, console: Stack, name: str) -> Any:
    page = await (await browser.new_context(viewport={"width": 1200, "height": 900})).new_page()
    page.set_default_timeout(10_000)
    await page.goto(f"{console.url}/")
    assert page.url.endswith("/login")  # nothing is shown to a stranger
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{console.url}/")
    return page


def item(eid: str) -> str:
    return f"article[data-escalation='{eid}']"


async def escalated(console: Stack, text: str, email: str = "ada@example.com") -> tuple[str, Any]:
    wid = await console.client.submit("support", {"text": text, "customer_email": email})
    waiting = await console.client.wait(wid, timeout=60)
    assert waiting.status == "escalated", waiting
    # read by its id (a listing of the bucket's keys has, rarely, come back empty just after
    # a write: nats-py's keys() through a fresh watcher)
    index = EscalationIndex(await open_bucket(
        console.client.js, console.stack.settings.subjects.bucket(Bucket.ESCALATIONS)))
    esc = await index.get(waiting.escalation_id)
    assert esc is not None, waiting
    return wid, esc


async def entries(console: Stack, wid: str) -> list[Entry]:
    """What ``switchyard trace`` shows of a run: the journal folded again, and its tool calls."""
    return [e for ev in await run_events(console.client, console.stack.settings, wid)
            for e in ev.entries]


async def test_a_low_confidence_ticket_appears_live_is_claimed_edited_and_approved(
    console: Stack, browser: Any, record_property: Any,
) -> None:
    ann = await signed_in(browser, console, "ann")
    bob = await signed_in(browser, console, "bob")
    wid, esc = await escalated(console, "hmm something maybe")
    assert esc.kind == "low_confidence"
    # pushed to the open page (server-sent events), not found by reloading it
    await ann.wait_for_selector(item(esc.id), timeout=1000)
    seen = time.time() - esc.created_at
    card = ann.locator(item(esc.id))
    assert "against the threshold 0.50" in await card.inner_text()
    await ann.screenshot(path=str(SHOTS / "queue.png"), full_page=True)

    await card.locator("button[name=claim]").click()
    await ann.wait_for_selector(f"{item(esc.id)}.claimed")
    # the other reviewer's page shows it claimed, live, and offers him no decision
    await bob.wait_for_selector(f"{item(esc.id)}.claimed")
    other = bob.locator(item(esc.id))
    assert "claimed by ann" in await other.inner_text()
    assert await other.locator("button[value=approve]").count() == 0
    await bob.screenshot(path=str(SHOTS / "queue-claimed-by-another.png"), full_page=True)

    card = ann.locator(item(esc.id))
    await card.locator("details.edit summary").click()
    draft = json.loads(await card.locator("textarea[name=edited]").input_value())
    await card.locator("textarea[name=edited]").fill(json.dumps({**draft, "intent": 12}))
    await card.locator("button[value=edit]").click()
    error = ann.locator("#decision-error")
    assert "does not fit the step's schema at intent" in await error.inner_text()
    assert any(e.id == esc.id for e in await console.client.escalations())  # nothing was sent

    card = ann.locator(item(esc.id))
    await card.locator("details.edit summary").click()
    edited = {**draft, "intent": "billing", "sensitivity": "normal", "severity": "normal"}
    await card.locator("textarea[name=edited]").fill(json.dumps(edited))
    await card.locator("input[name=note]").fill("a billing question")
    await card.locator("button[value=edit]").click()
    await ann.wait_for_selector(item(esc.id), state="detached")
    done = await console.client.wait(wid, timeout=60)
    assert done.status == "completed", done
    events = await entries(console, wid)
    decision = next(e for e in events if e.type == "decision")
    assert (decision.data["action"], decision.data["reviewer"]) == ("edit", "ann")
    # in the journal: the reviewer's Decision with the edited output, which the run went on with
    (record,) = [r for r in await console.client.journal_records(wid)
                 if r.subject.endswith(".decision")]
    sent = msgspec.json.decode(record.data)
    assert (sent["reviewer"], sent["output"]) == ("ann", edited)
    assert any(e.type == "step.dispatched" and e.step == "retrieval" for e in events)
    assert done.outcome is not None and done.outcome.steps[0].step == "triage"
    record_property("report", f"escalation shown {seen * 1000:.0f} ms after it was raised")

    await ann.goto(f"{console.url}/workflows/{wid}")
    assert "audit verify:" in await ann.locator("#verdict").inner_text()
    assert "OK" in await ann.locator("#verdict").inner_text()
    assert await ann.locator(".lane").count() >= 5
    await ann.screenshot(path=str(SHOTS / "workflow.png"), full_page=True)
    await ann.goto(f"{console.url}/workflows?state=completed")
    assert wid in await ann.locator("table.runs").inner_text()
    await ann.screenshot(path=str(SHOTS / "workflows.png"), full_page=True)
    await ann.goto(f"{console.url}/agents")
    text = await ann.locator("table.agents").inner_text()
    assert "agent-triage" in text and "toolhost" in text and "received" in text
    await ann.screenshot(path=str(SHOTS / "agents.png"), full_page=True)


async def test_a_risky_refund_is_rejected_and_the_workflow_takes_its_rejection_path(
    console: Stack, browser: Any,
) -> None:
    ann = await signed_in(browser, console, "ann")
    wid, esc = await escalated(console, "Please refund 400 EUR, I was charged twice")
    assert esc.kind == "approval"
    card = ann.locator(item(esc.id))
    await card.wait_for()
    text = await card.inner_text()
    assert "propose_refund" in text and '"amount": 400' in text  # the exact call held
    await ann.screenshot(path=str(SHOTS / "queue-approval.png"), full_page=True)
    await card.locator("button[value=reject]").click()  # a rejection needs a reason
    assert "needs a reason" in await ann.locator("#decision-error").inner_text()
    card = ann.locator(item(esc.id))
    await card.locator("input[name=note]").fill("over the limit for this customer")
    await card.locator("button[value=reject]").click()
    await ann.wait_for_selector(item(esc.id), state="detached")
    assert (await console.client.wait(wid, timeout=60)).status == "completed"
    events = await entries(console, wid)
    assert [e.data.get("tool") for e in events if e.type == "tool.approval_rejected"] == [
        "propose_refund"]
    assert not any(e.type == "tool.called" and e.data.get("tool") == "propose_refund"
                   for e in events)  # no refund was paid
    decision = next(e for e in events if e.type == "decision")
    assert decision.data["reviewer"] == "ann" and "over the limit" in decision.data["note"]


async def test_a_held_refund_approved_with_edited_arguments_runs_as_edited_once(
    console: Stack, browser: Any,
) -> None:
    ann = await signed_in(browser, console, "ann")
    wid, esc = await escalated(console, "Please refund 400 EUR, I was charged twice")
    card = ann.locator(item(esc.id))
    await card.locator("details.edit summary").click()
    args = json.loads(await card.locator("textarea[name=edited]").input_value())
    assert args["amount"] == 400
    await card.locator("textarea[name=edited]").fill(json.dumps({**args, "amount": "lots"}))
    await card.locator("button[value=edit]").click()
    assert "propose_refund's schema at amount" in await ann.locator("#decision-error").inner_text()
    card = ann.locator(item(esc.id))
    await card.locator("details.edit summary").click()
    await card.locator("textarea[name=edited]").fill(json.dumps({**args, "amount": 150}))
    await card.locator("button[value=edit]").click()
    await ann.wait_for_selector(item(esc.id), state="detached")
    done = await console.client.wait(wid, timeout=60)
    assert done.status == "completed"
    assert done.outcome is not None and "refund of 150.00 EUR" in done.outcome.output["reply"]
    events = await entries(console, wid)
    paid = [e.data for e in events if e.type == "tool.called" and e.data.get("tool") ==
            "propose_refund"]
    assert len(paid) == 1 and paid[0].get("approved_by") == "ann", paid  # once, as edited
    held = next(e.data for e in events if e.type == "tool.approval_required")
    assert paid[0]["call_digest"] != held["call_digest"]  # another call than the one held
    await ann.goto(f"{console.url}/workflows/{wid}")
    assert "OK" in await ann.locator("#verdict").inner_text()  # the replay agrees
    async with httpx.AsyncClient() as http:  # the console's own counters
        text = (await http.get(
            f"http://127.0.0.1:{console.stack.metrics_ports['console']}/metrics")).text
    assert 'switchyard_console_decisions_total{action="edit"}' in text


async def test_ticket_text_is_shown_as_text_never_run(console: Stack, browser: Any) -> None:
    ann = await signed_in(browser, console, "ann")
    dialogs: list[str] = []
    ann.on("dialog", lambda d: dialogs.append(d.message))
    attack = ("Our lawyer will sue about the outage <script>alert('owned')</script>"
              "<img src=x onerror=alert(2)>")
    _, esc = await escalated(console, attack)
    card = ann.locator(item(esc.id))
    await card.locator("details.evidence summary").click()
    assert "<script>alert('owned')</script>" in await card.inner_text()
    assert await ann.locator("script").count() == 1  # console.js alone
    assert await ann.locator("img").count() == 0
    assert dialogs == []
    await ann.screenshot(path=str(SHOTS / "queue-script-as-text.png"), full_page=True)


async def test_a_decision_without_a_session_or_csrf_token_is_refused(
    console: Stack, browser: Any,
) -> None:
    _, esc = await escalated(console, "Our lawyer will sue about the outage")
    url = f"{console.url}/items/{esc.id}/decide"
    async with httpx.AsyncClient() as http:
        anonymous = await http.post(url, data={"action": "approve", "csrf": "x"})
        assert anonymous.status_code == 401
        assert (await http.get(f"{console.url}/queue/items")).status_code == 303  # to /login
    ann = await signed_in(browser, console, "ann")
    cookies = {c["name"]: c["value"] for c in await ann.context.cookies()}
    async with httpx.AsyncClient(cookies=cookies) as http:  # the reviewer's own session
        no_token = await http.post(url, data={"action": "approve"})
        assert no_token.status_code == 403
        forged = await http.post(url, data={"action": "approve", "csrf": "forged"})
        assert forged.status_code == 403
        assert "CSRF" in forged.text
        # bad input, with the session and its token: a clear answer, nothing decided
        token = await ann.locator("input[name=csrf]").first.get_attribute("value")
        unknown = await http.post(url, data={"action": "delete", "csrf": token})
        assert unknown.status_code == 400 and "unknown action" in unknown.text
        broken = await http.post(url, data={"action": "edit", "csrf": token, "edited": "{"})
        assert broken.status_code == 422 and "not JSON" in broken.text
        nobody = await http.post(f"{console.url}/items/no such id/decide",
                                 data={"action": "approve", "csrf": token})
        assert nobody.status_code == 404 and "no open escalation" in nobody.text
        bad_id = await http.get(f"{console.url}/workflows/not a token")
        assert bad_id.status_code == 400 and "not a valid subject token" in bad_id.text
        missing = await http.get(f"{console.url}/workflows/never-submitted")
        assert missing.status_code == 404 and "never submitted" in missing.text
    assert any(e.id == esc.id for e in await console.client.escalations())  # still waiting
    login = await (await browser.new_context()).new_page()
    await login.goto(f"{console.url}/login")
    await login.screenshot(path=str(SHOTS / "login.png"), full_page=True)


async def test_the_console_says_it_is_reconnecting_and_goes_on_after_nats_restarts(
    console: Stack, browser: Any,
) -> None:
    ann = await signed_in(browser, console, "ann")
    banner = ann.locator("#bus-status")
    assert await banner.is_hidden()
    assert console.stack.nats is not None
    await console.stack.nats.stop()
    await banner.wait_for(state="visible", timeout=15_000)
    await ann.screenshot(path=str(SHOTS / "queue-reconnecting.png"), full_page=True)
    await console.stack.nats.restart()
    await banner.wait_for(state="hidden", timeout=30_000)
    _, esc = await escalated(console, "hmm something maybe")
    await ann.wait_for_selector(item(esc.id), timeout=10_000)
