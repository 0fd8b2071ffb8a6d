"""The house rules that keep the layout honest (DESIGN.md "Layout", STYLE.md)."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import switchyard.agents as plugin_api
import switchyard.protocol.errors as errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "agents", "supervisor", "tools", "switchyard")
FORBIDDEN_IN_PURE = ("nats", "asyncio", "structlog", "prometheus_client")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_structure_protocol_is_pure() -> None:
    """protocol/*.py: no nats, no asyncio, no environment, nothing of ours outside protocol."""
    pure = sorted((ROOT / "protocol").glob("*.py"))
    assert len(pure) >= 10
    for path in pure:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN_IN_PURE, f"{path.name} imports {name}"
            if name.startswith("switchyard."):
                assert name.startswith("switchyard.protocol") and not name.startswith(
                    "switchyard.protocol.bus"), f"{path.name} imports {name}"
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, f"{path.name} reads the environment"


def test_structure_no_environment_below_settings() -> None:
    for folder in ("protocol", "agents", "supervisor", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "os.environ" not in text and "getenv(" not in text, path
            assert "switchyard.settings" not in text, path


def test_structure_signal_handlers_only_in_the_cli() -> None:
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent == ROOT / "switchyard" / "cli":
                continue
            assert "add_signal_handler" not in path.read_text(), path


def test_structure_dependency_direction() -> None:
    """protocol <- protocol.bus <- tools <- agents; protocol.bus <- supervisor; the supervisor
    never imports an agent, an agent never imports the supervisor."""
    allowed = {
        "protocol/bus": ("switchyard.protocol",),
        "tools": ("switchyard.protocol", "switchyard.tools"),
        "agents": ("switchyard.protocol", "switchyard.tools", "switchyard.agents",
                   "switchyard.cli.processes"),  # Agent.run() hands over to the CLI's runner
        "supervisor": ("switchyard.protocol", "switchyard.supervisor"),
    }
    for folder, prefixes in allowed.items():
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                if name.startswith("switchyard"):
                    assert name.startswith(prefixes), f"{path.relative_to(ROOT)} imports {name}"


def test_structure_no_module_over_500_lines_but_the_engine() -> None:
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "engine.py" and path.parent.name == "supervisor":
                continue
            lines = len(path.read_text().splitlines())
            assert lines <= 500, f"{path.relative_to(ROOT)} has {lines} lines"


def test_structure_plugin_api_exports_every_error_a_handler_meets() -> None:
    for name, value in vars(errors).items():
        if inspect.isclass(value) and issubclass(value, errors.SwitchyardError):
            assert getattr(plugin_api, name, None) is value, f"switchyard.agents lacks {name}"
    for name in ("NeedsHuman", "Retry", "Reject", "ToolError", "ErrorCode"):
        assert name in plugin_api.__all__
    assert plugin_api.__all__ == sorted(plugin_api.__all__)
    assert all(hasattr(plugin_api, n) for n in plugin_api.__all__)


def _mentions_any(hint: object) -> bool:
    if hint is typing.Any:
        return True
    return any(_mentions_any(a) for a in typing.get_args(hint))


def test_structure_no_any_in_what_a_plugin_author_touches() -> None:
    from switchyard.agents import Agent, NeedsHuman, Reject, Retry, Scored, TaskContext

    touched = {
        TaskContext: ("call_tool", "outputs", "workflow_input", "log", "deadline", "workflow_id"),
        Agent: ("__init__", "task", "on_startup", "schemas", "run", "start", "stop", "serve"),
        NeedsHuman: ("__init__",), Retry: ("__init__",), Reject: ("__init__",),
        Scored: ("__init__",),
    }
    ns = {**vars(plugin_api), **vars(typing)}
    for cls, members in touched.items():
        for member in members:
            attr = inspect.getattr_static(cls, member)
            fn = attr.fget if isinstance(attr, property) else getattr(attr, "func", attr)
            if isinstance(attr, type(TaskContext.log)):  # cached_property
                fn = attr.func
            hints = typing.get_type_hints(fn, globalns={**ns, **vars(inspect.getmodule(fn))})
            for where, hint in hints.items():
                assert not _mentions_any(hint), f"{cls.__name__}.{member} {where}: {hint}"
