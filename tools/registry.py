"""ToolRegistry: the tools one host serves, by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import check_token
from switchyard.tools.contract import Tool


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        check_token("tool", t.name)
        if t.name in self._tools:
            raise ConfigError(f"tool {t.name!r} is registered twice")
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [self._tools[n].schema() for n in self.names()]

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._tools)
