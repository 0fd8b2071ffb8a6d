"""JMESPath expressions (never ``eval``): one interpreter and one truthiness rule.

Step conditions and routes (the supervisor) and approval rules in grants (the tool host) are
JMESPath; both must agree on what "holds" means, so the rule lives here: an expression holds when
its value is truthy by JMESPath's own rule (not null, false, '', [] or {}).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser
import jmespath.visitor

from switchyard.protocol.errors import ConfigError


@lru_cache(maxsize=1024)
def compile_expression(expression: str) -> jmespath.parser.ParsedResult:
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ConfigError(f"expression {expression!r} is not valid JMESPath: {exc}") from None


# one interpreter for every search (``ParsedResult.search`` builds a new one per call)
_interpreter = jmespath.visitor.TreeInterpreter(jmespath.visitor.Options())


def evaluate(expression: str, document: object) -> Any:
    return _interpreter.visit(compile_expression(expression).parsed, document)


def truthy(value: object) -> bool:
    """JMESPath truthiness: everything but null, false, '', [] and {} (0 is true)."""
    if value is None or value is False:
        return False
    return not isinstance(value, str | list | dict) or bool(value)


def holds(expression: str, document: object) -> bool:
    return truthy(evaluate(expression, document))
