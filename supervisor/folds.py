"""Folds: each workflow's journal folded, as one supervisor replica holds it.

A cache, never the truth: a fold that is behind (another replica took some of the workflow's
records, or this one restarted) reads what it missed from the journal, starting at the
workflow's snapshot if it has one. Records of one workflow are folded one at a time, in the order
they were delivered (``lock``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict

from switchyard.protocol import journal
from switchyard.protocol.bus.journal import Journal
from switchyard.protocol.journal import Record
from switchyard.protocol.subjects import Subjects
from switchyard.supervisor.engine import TERMINAL, Transition
from switchyard.supervisor.journal import Definitions, Folded, definition_for, fold
from switchyard.supervisor.store import Snapshots

_ENDED_KEPT = 10_000  # finished runs whose last sequence is remembered (for ``folded``)


class Folds:
    def __init__(
        self, journal: Journal, snapshots: Snapshots, subjects: Subjects,
        definitions: Definitions, *, max_bytes: int, size: int,
    ) -> None:
        self._journal, self._snapshots, self._s = journal, snapshots, subjects
        self._definitions = definitions
        self._max_bytes, self._size = max_bytes, size
        self.cache: OrderedDict[str, Folded] = OrderedDict()
        self._ended: OrderedDict[str, int] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self.caught_up = 0  # how many times a fold read records it had not been given

    def __len__(self) -> int:
        return len(self.cache)

    def running(self) -> int:
        return sum(1 for f in self.cache.values() if f.state is not None)

    def lock(self, workflow_id: str) -> asyncio.Lock:
        lock = self._locks.get(workflow_id)
        if lock is None:
            lock = self._locks[workflow_id] = asyncio.Lock()
        return lock

    def get(self, workflow_id: str) -> Folded | None:
        return self.cache.get(workflow_id)

    async def before(self, workflow_id: str, record: Record) -> Folded:
        """The fold up to the record before ``record``. The record says which one that is (the
        sequence it was appended after, which the server checked): if the cached fold is there,
        nothing is read; else the journal is read from the snapshot or the cached fold on."""
        folded = self.cache.get(workflow_id)
        follows = (int(record.expected) if record.expected.isdigit()
                   and record.expected_subject == self._s.journal(workflow_id) else None)
        if folded is None and follows == 0:
            return Folded(None)  # a new run: there is nothing before it
        if folded is not None and follows == folded.seq:
            return folded
        return await self.catch_up(workflow_id, folded, before=record.seq, through=follows)

    async def catch_up(
        self, workflow_id: str, folded: Folded | None, *, before: int | None,
        through: int | None = None,
    ) -> Folded:
        """Fold the journal's records up to (not including) ``before``, from what is known;
        ``through`` is the last of them, when the record at ``before`` says which it follows."""
        if folded is None:
            snap = await self._snapshots.get(workflow_id)
            folded = Folded(snap, snap.seq, snap.head) if snap is not None else Folded(None)
        self.caught_up += 1
        if through is not None and through <= folded.seq:
            through = None  # nothing to go by: read up to the record itself
        async for record in self._journal.records(workflow_id, after=folded.seq, before=before,
                                                  through=through):
            folded, _ = await self.fold(workflow_id, folded, record)
        return folded

    async def fold(self, workflow_id: str, folded: Folded, record: Record) -> tuple[Folded, Transition]:
        read = journal.read(record, self._s, workflow_id, folded.seq, folded.head,
                            max_bytes=self._max_bytes)
        return fold(await definition_for(folded, read, self._definitions), folded, read)

    async def now(self, workflow_id: str) -> Folded:
        """The fold up to the journal's last record (one read to find it). A look, not kept:
        the records it read ahead are folded, with what they imply, when they are delivered."""
        folded = self.cache.get(workflow_id)
        last = await self._journal.last(workflow_id)
        if last is None:
            return Folded(None)
        if folded is None or folded.seq != last.seq:
            folded = await self.catch_up(workflow_id, folded, before=last.seq + 1)
        return folded

    def remember(self, workflow_id: str, folded: Folded) -> None:
        waiting = self._waiters.get(workflow_id)
        if waiting:
            for seq, fut in waiting:
                if seq <= folded.seq and not fut.done():
                    fut.set_result(None)
            waiting[:] = [(q, f) for q, f in waiting if not f.done()]
            if not waiting:
                del self._waiters[workflow_id]
        if folded.state is not None and folded.state.status in TERMINAL:
            self.cache.pop(workflow_id, None)
            self._ended[workflow_id] = folded.seq
            self._ended.move_to_end(workflow_id)
            while len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)
            return
        self.cache[workflow_id] = folded
        self.cache.move_to_end(workflow_id)
        while len(self.cache) > self._size:
            self.cache.popitem(last=False)

    async def folded(self, workflow_id: str, seq: int) -> None:
        """Return once this replica has folded ``workflow_id``'s journal up to ``seq``."""
        known = self.cache.get(workflow_id)
        if max(known.seq if known else 0, self._ended.get(workflow_id, 0)) >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(workflow_id, []).append((seq, fut))
        await fut
