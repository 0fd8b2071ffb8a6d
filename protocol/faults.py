"""Named, seeded fault points for the fault-injection suite (``switchyard chaos``): the plan.

A ``FaultPlan`` is parsed by settings from ``SWITCHYARD_FAULTS`` (``point=probability,...;seed=N;
log=PATH``, e.g. ``agent.after_tool_call=0.05,agent.before_ack=0.05;seed=7;log=/tmp/faults.log``)
and passed to a component in its config; an empty plan is inert. At a named point a process then
dies of SIGKILL with that probability, the way a power cut or the OOM killer would take it, after
appending ``<name> <point> <pid>`` to the log (fsynced), so the suite can check that every fault it
asked for really fired. The draws are seeded by the seed, the process's name and its incarnation
(``SWITCHYARD_FAULT_NAME``, ``SWITCHYARD_FAULT_RUN``): a rerun with the same seed kills at the same
points. Firing is I/O and lives in ``switchyard.protocol.bus.faults``.

Points: ``agent.before_tool_call``, ``agent.after_tool_call`` (the tool ran, its reply is in hand),
``agent.before_ack`` (the result is on the journal, the task not acked), ``supervisor.after_fold``
(a record is folded, nothing it implies is sent yet), ``supervisor.before_ack`` (all it implies
is sent and stored, the record is not acknowledged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from switchyard.protocol.errors import ConfigError

POINTS = ("agent.before_tool_call", "agent.after_tool_call", "agent.before_ack",
          "supervisor.after_fold", "supervisor.before_ack")


@dataclass
class FaultPlan:
    points: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    log: str = ""
    name: str = ""  # which process (seeds its draws, and names it in the log)
    run: int = 0  # which incarnation of it

    @classmethod
    def parse(cls, spec: str, *, name: str = "", run: int = 0) -> FaultPlan:
        plan = cls(name=name, run=run)
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, _, value = part.partition("=")
            if key == "seed":
                try:
                    plan.seed = int(value)
                except ValueError:
                    raise ConfigError(f"fault seed {value!r} is not an integer") from None
            elif key == "log":
                plan.log = value
            else:
                for item in part.split(","):
                    point, _, p = item.partition("=")
                    if point not in POINTS:
                        raise ConfigError(
                            f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
                    try:
                        plan.points[point] = float(p)
                    except ValueError:
                        raise ConfigError(
                            f"fault point {point}: probability {p!r} is not a number") from None
        return plan

    def render(self) -> str:
        points = ",".join(f"{k}={v:g}" for k, v in self.points.items())
        return ";".join(filter(None, (points, f"seed={self.seed}", f"log={self.log}" if self.log else "")))

    def __bool__(self) -> bool:
        return any(self.points.values())
