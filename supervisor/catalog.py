"""WorkflowCatalog: the workflows a supervisor runs: those it was started with, plus any put on
the bus (KV bucket ``<prefix>_workflow_defs``, key = workflow name) by ``switchyard workflow put``.

A workflow put on the bus is read when a submission names it, so a new workflow (and the agent
role it routes to) can join a running deployment without a restart. A run keeps the definition
it started with for as long as this supervisor lives.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.supervisor.journal import Definitions
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.workflow import Workflow, parse_workflow


class WorkflowCatalog:
    def __init__(
        self, fixed: dict[str, Workflow], kv: KeyValue | None = None, *,
        policy: Policy | None = None,
    ) -> None:
        self._policy = policy
        self._fixed = {name: self._admit(wf) for name, wf in fixed.items()}
        self._kv = kv
        self._seen: dict[str, Workflow] = {}

    async def latest(self, name: str) -> Workflow | None:
        """The definition a new run of ``name`` starts with."""
        if name in self._fixed:
            return self._fixed[name]
        if self._kv is None:
            return None
        try:
            entry = await self._kv.get(name)
        except (KeyNotFoundError, ValueError):
            return None
        if not entry.value:
            return None
        wf = self._admit(parse_workflow(entry.value.decode(), f"bucket:{name}"))
        self._seen[name] = wf
        return wf

    async def running(self, name: str) -> Workflow | None:
        """The definition runs already under way use."""
        return self._fixed.get(name) or self._seen.get(name) or await self.latest(name)

    def _admit(self, wf: Workflow) -> Workflow:
        """Check a workflow against the policy and give it the policy's approval defaults."""
        if self._policy is None:
            return wf
        self._policy.check_workflow(wf)
        return self._policy.apply_defaults(wf)

    def names(self) -> list[str]:
        return sorted({*self._fixed, *self._seen})


async def put_workflow(kv: KeyValue, text: str, source: str = "<text>") -> Workflow:
    """Validate and store a workflow definition; returns it. Raises ``ConfigError`` if invalid."""
    wf = parse_workflow(text, source)
    await kv.put(wf.name, text.encode())
    return wf


async def list_workflows(kv: KeyValue) -> list[str]:
    try:
        return sorted(await kv.keys())
    except NoKeysError:
        return []



def definitions_of(catalog: WorkflowCatalog) -> Definitions:
    """The catalogue as a fold's ``Definitions``: the latest for a new run, else the running."""

    async def find(name: str, new: bool) -> Workflow | None:
        return await (catalog.latest(name) if new else catalog.running(name))

    return find
