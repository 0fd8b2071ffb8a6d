"""The ``switchyard`` command line: one module per command family, on one Typer app."""

from switchyard.cli import a2a, config, console, measure, ops, processes, quality, work
from switchyard.cli.app import app

__all__ = ["a2a", "app", "config", "console", "main", "measure", "ops", "processes", "quality", "work"]


def main() -> None:
    app()
