"""Named, seeded fault points for the fault-injection suite (``switchyard chaos``).

Inert unless ``SWITCHYARD_FAULTS`` is set, as ``point=probability,...;seed=N;log=PATH``, e.g.
``agent.after_tool_call=0.05,agent.before_ack=0.05;seed=7;log=/tmp/faults.log``. At a named point
a process then dies of SIGKILL with that probability, the way a power cut or the OOM killer would
take it, after appending ``<name> <point> <pid>`` to the log (fsynced), so the suite can check
that every fault it asked for really fired. The draws are seeded by the seed, the process's name
(``SWITCHYARD_FAULT_NAME``) and its incarnation (``SWITCHYARD_FAULT_RUN``): a rerun with the same
seed kills at the same points.

Points: ``agent.before_tool_call``, ``agent.after_tool_call`` (the tool ran, its reply is in hand),
``agent.before_ack`` (the result is stored, the task not acked), ``supervisor.after_store`` (a
transition is stored, nothing it implies is published yet), ``supervisor.before_ack``.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field

POINTS = ("agent.before_tool_call", "agent.after_tool_call", "agent.before_ack",
          "supervisor.after_store", "supervisor.before_ack")


@dataclass
class FaultPlan:
    points: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    log: str = ""

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        plan = cls()
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, _, value = part.partition("=")
            if key == "seed":
                plan.seed = int(value)
            elif key == "log":
                plan.log = value
            else:
                for item in part.split(","):
                    point, _, p = item.partition("=")
                    if point not in POINTS:
                        raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
                    plan.points[point] = float(p)
        return plan

    def render(self) -> str:
        points = ",".join(f"{k}={v:g}" for k, v in self.points.items())
        return ";".join(filter(None, (points, f"seed={self.seed}", f"log={self.log}" if self.log else "")))


_plan = FaultPlan.parse(os.environ.get("SWITCHYARD_FAULTS", ""))
_name = os.environ.get("SWITCHYARD_FAULT_NAME", "")
_rng = random.Random(f"{_plan.seed}:{_name}:{os.environ.get('SWITCHYARD_FAULT_RUN', '0')}")


def hit(point: str) -> None:
    """Die here, with the configured probability (never, unless faults are configured)."""
    p = _plan.points.get(point)
    if not p or _rng.random() >= p:
        return
    if _plan.log:
        fd = os.open(_plan.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{_name or '-'} {point} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
