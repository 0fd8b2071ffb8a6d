"""The MCP bridge: mounts the tools of a Model Context Protocol server (over stdio) as Switchyard
tools, so they are served on the bus under the same grants, policy, limits, ledger and audit as
any other tool.

Each MCP tool becomes a ``Tool`` named ``<prefix><mcp tool name>``. Its arguments are checked
against the tool's own JSON Schema (with ``jsonschema``) before the server sees them, so a bad
call is refused, audited and dead-lettered like any other. The MCP tool annotations decide the
risk: read-only tools are ``read`` without side effects; destructive ones are ``critical``; the
rest ``write``; a tool without annotations is taken to have side effects. ``idempotentHint``
marks a tool safe to run again under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from pydantic import BaseModel, ConfigDict, model_validator

from switchyard.protocol.errors import ConfigError, ErrorCode, ToolError
from switchyard.protocol.subjects import check_token
from switchyard.tools.contract import Risk, Tool


@dataclass(frozen=True)
class McpServerConfig:
    """How to start one MCP server: ``name`` labels it; its tools are named ``prefix + tool``."""

    name: str
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, spec: str) -> McpServerConfig:
        """``name=command args…``, e.g. ``time=python -m mcp_server_time``."""
        name, sep, command = spec.partition("=")
        words = shlex.split(command)
        if not sep or not name or not words:
            raise ConfigError(f"MCP server {spec!r} is not of the form name=command [args]")
        return cls(name=name.strip(), command=words[0], args=words[1:])


class McpResult(BaseModel):
    content: list[dict[str, Any]]
    structured: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "\n".join(str(c.get("text", "")) for c in self.content if c.get("type") == "text")


def _args_model(tool_name: str, schema: dict[str, Any]) -> type[BaseModel]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)

    class Arguments(BaseModel):
        model_config = ConfigDict(extra="allow")

        @model_validator(mode="before")
        @classmethod
        def _match_schema(cls, data: Any) -> Any:
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
            if errors:
                where = ".".join(str(p) for p in errors[0].path) or "(arguments)"
                raise ValueError(f"{where}: {errors[0].message}")
            return data

    Arguments.__name__ = Arguments.__qualname__ = f"{tool_name}_arguments"
    return Arguments


class McpBridge:
    """A running MCP server and the Switchyard tools it offers."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.tools: list[Tool] = []
        self._session: ClientSession | None = None
        self._closing = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> McpBridge:
        """Start the server and list its tools. The session lives in a task of its own (the
        SDK's cancel scopes must be entered and left in one task, whoever calls stop())."""
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready))
        waiter = asyncio.create_task(ready.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({self._runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not ready.is_set():
            await self.stop()
            raise ConfigError(f"MCP server {self.config.name!r} did not start "
                              f"({self.config.command} {' '.join(self.config.args)})")
        return self

    async def _run(self, ready: asyncio.Event) -> None:
        cfg = self.config
        params = StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            self.tools = [self._mount(t) for t in listed.tools]
            self._session = session
            ready.set()
            await self._closing.wait()
        self._session = None

    def _mount(self, mcp_tool: Any) -> Tool:
        name = check_token("tool", f"{self.config.prefix}{mcp_tool.name}")
        hints = mcp_tool.annotations
        read_only = bool(hints and hints.read_only_hint)
        risk: Risk = "read" if read_only else (
            "critical" if hints is not None and hints.destructive_hint else "write")

        async def call(args: BaseModel) -> McpResult:
            assert self._session is not None
            result = await self._session.call_tool(mcp_tool.name, args.model_dump())
            content = [c.model_dump(mode="json", exclude_none=True) for c in result.content]
            out = McpResult(content=content, structured=result.structured_content)
            if result.is_error:
                raise ToolError(out.text or f"{mcp_tool.name} failed", code=ErrorCode.TOOL_FAILED)
            return out

        return Tool(
            name=name,
            description=(mcp_tool.description or "").strip().split("\n\n", 1)[0],
            args_model=_args_model(name, mcp_tool.input_schema),
            result_model=McpResult,
            fn=call,
            risk=risk,
            side_effects=not read_only,
            idempotent=bool(hints and hints.idempotent_hint),
        )

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner
            self._runner = None

    async def __aenter__(self) -> McpBridge:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

