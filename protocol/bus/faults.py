"""Faults: fires the fault points of a ``FaultPlan`` (see ``switchyard.protocol.faults``)."""

from __future__ import annotations

import os
import random
import signal

from switchyard.protocol.faults import FaultPlan


class Faults:
    """Dies at a named point with the plan's probability; never, for an empty plan."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self._rng = random.Random(f"{self.plan.seed}:{self.plan.name}:{self.plan.run}")

    def hit(self, point: str) -> None:
        p = self.plan.points.get(point)
        if not p or self._rng.random() >= p:
            return
        if self.plan.log:
            fd = os.open(self.plan.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{self.plan.name or '-'} {point} {os.getpid()}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
