"""``switchyard bench``: Switchyard beside the raw transport it sits on, in the same run."""

from switchyard.bench.drivers import Driver
from switchyard.bench.run import (
    FULL,
    QUICK,
    Plan,
    Report,
    Row,
    busy_seconds,
    cpu_seconds,
    measure,
    report_json,
    rss_bytes,
    run_bench,
)

__all__ = ["FULL", "QUICK", "Driver", "Plan", "Report", "Row", "busy_seconds", "cpu_seconds",
           "measure", "report_json", "rss_bytes", "run_bench"]
