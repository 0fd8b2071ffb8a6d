"""WorkflowCatalog: the workflows a supervisor runs: those it was started with, plus any put on
the bus (KV bucket ``<prefix>_workflow_defs``, key = workflow name) by ``switchyard workflow put``.

A workflow put on the bus is read when a submission names it, so a new workflow (and the agent
role it routes to) can join a running deployment without a restart. A run keeps the definition
it started with (its state names it by digest, ``find`` looks it up, in the bucket's history if
need be), on every replica and in every replay.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.protocol.errors import ConfigError
from switchyard.supervisor.journal import Definitions
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.workflow import Workflow, parse_workflow


class WorkflowCatalog:
    def __init__(
        self, fixed: dict[str, Workflow], kv: KeyValue | None = None, *,
        policy: Policy | None = None, models: frozenset[str] | None = None,
    ) -> None:
        self._policy = policy
        self._models = models  # the catalogue's model names (None: not checked here)
        self._fixed = {name: self._admit(wf) for name, wf in fixed.items()}
        self._kv = kv
        self._seen: dict[str, Workflow] = {}
        self._by_digest: dict[str, Workflow] = {wf.digest(): wf for wf in self._fixed.values()}

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
        self._by_digest.setdefault(wf.digest(), wf)
        return wf

    async def find(self, name: str, digest: str) -> Workflow | None:
        """The definition of ``name`` whose digest is ``digest`` (a run's own, even after newer
        ones were put: looked for in the bucket's history), or the latest when ``digest`` is ""
        (a new run). Not found anywhere: the one runs under way use."""
        if not digest:
            return await self.latest(name)
        wf = self._by_digest.get(digest)
        if wf is not None:
            return wf
        if self._kv is not None and name not in self._fixed:
            try:
                history = await self._kv.history(name)
            except (KeyNotFoundError, NoKeysError, ValueError):
                history = []
            for entry in history:
                if not entry.value:
                    continue
                try:
                    old = self._admit(parse_workflow(entry.value.decode(), f"bucket:{name}"))
                except ConfigError:
                    continue
                self._by_digest.setdefault(old.digest(), old)
            if digest in self._by_digest:
                return self._by_digest[digest]
        return await self.running(name)

    async def running(self, name: str) -> Workflow | None:
        """The definition runs already under way use."""
        return self._fixed.get(name) or self._seen.get(name) or await self.latest(name)

    def _admit(self, wf: Workflow) -> Workflow:
        """Check a workflow against the policy (and the models it names against the model
        catalogue's) and give it the policy's approval defaults."""
        if self._models is not None and (unknown := sorted(wf.model_names() - self._models)):
            raise ConfigError(f"workflow {wf.name} names models the catalogue lacks: {unknown}")
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
    """The catalogue as a fold's ``Definitions``: by name and a run's definition digest."""
    return catalog.find
