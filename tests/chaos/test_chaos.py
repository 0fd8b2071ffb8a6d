"""The fault-injection suite, CI-sized: the real stack as processes under named, seeded faults.
Run it alone with ``pytest -m chaos``; ``switchyard chaos --scale full`` runs the issue's sizes
(1000 tasks, 200 workflows, 5000 tasks, 50 + 100 inputs, 5000 workflows on a cluster)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from switchyard.chaos import SIZES, run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(200)]


async def test_agents_killed_at_every_point_lose_and_repeat_nothing() -> None:
    r = await run_scenario("agents", scale="ci", seed=1)
    assert r.ok, r.problems
    assert r.acknowledged == r.completed == SIZES["ci"]["agents"]
    assert (r.lost, r.duplicated_effects) == (0, 0)
    assert r.effects == r.completed  # one side effect per workflow, however many deliveries
    assert set(r.faults_fired) == {"agent.before_tool_call", "agent.after_tool_call",
                                   "agent.before_ack"}  # each point really fired
    # the keeper restarted them (a timed kill can land on a process a fault is already killing)
    assert r.restarts >= max(sum(r.faults_fired.values()), r.kills) > 0


async def test_two_supervisors_killed_repeatedly_accept_each_step_once() -> None:
    r = await run_scenario("supervisor", scale="ci", seed=1)
    assert r.ok, r.problems
    assert r.completed == SIZES["ci"]["supervisor"] and r.lost == 0
    assert r.kills >= SIZES["ci"]["supervisor_kills"]
    assert r.steps_accepted_twice == 0 and r.duplicated_effects == 0
    assert r.effects == 5 * r.completed


async def test_a_nats_crash_midway_loses_no_acknowledged_workflow() -> None:
    r = await run_scenario("nats", scale="ci", seed=1)
    assert r.ok, r.problems
    assert (r.kills, r.restarts) == (1, 1)
    assert r.completed == r.acknowledged == SIZES["ci"]["nats"]
    assert (r.lost, r.duplicated_effects) == (0, 0)


async def test_poison_is_dead_lettered_and_nothing_dies() -> None:
    r = await run_scenario("poison", scale="ci", seed=1)
    assert r.ok, r.problems
    assert r.dead_lettered == r.bad_inputs == SIZES["ci"]["poison"]
    assert r.processes_restarted == []
    assert r.completed == SIZES["ci"]["good"]


@pytest.mark.timeout(400)
async def test_a_cluster_losing_its_journal_leader_loses_nothing_and_catches_up(
    record_property: Callable[[str, object], None],
) -> None:
    r = await run_scenario("cluster", scale="ci", seed=1)
    record_property("report", f"submitted {r.submitted}, acknowledged {r.acknowledged}, completed "
          f"{r.completed}, lost {r.lost}, duplicated {r.duplicated_effects}; killed {r.killed}; "
          f"recovered in {r.recovered_s} s, caught up in {r.caught_up_s} s; {r.elapsed_s} s in all")
    assert r.ok, r.problems
    assert (r.kills, r.restarts) == (1, 1), f"restarted: {r.processes_restarted}: {r.exits}"
    assert "SY_JOURNAL leader" in r.killed
    assert r.completed == r.acknowledged == SIZES["ci"]["cluster"]
    assert (r.lost, r.duplicated_effects) == (0, 0) and r.effects == r.completed
    assert 0 < r.recovered_s and 0 < r.caught_up_s
