"""``switchyard chaos``: the real stack as processes under named, seeded faults."""

from switchyard.chaos.suite import SCENARIOS, SIZES, reports_json, run_scenario

__all__ = ["SCENARIOS", "SIZES", "reports_json", "run_scenario"]
