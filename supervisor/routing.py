"""Step conditions and routes, as JMESPath expressions (never ``eval``).

An expression sees one document::

    {"input": <workflow input>, "steps": {<step>: <output>, ...},
     "output": <this step's output>, "confidence": <this step's confidence>}

so ``output.intent == 'legal'`` or ``steps.triage.severity == 'high'`` read naturally. Literals
are quoted JMESPath-style: strings in single quotes, numbers and booleans in backticks.
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


def evaluate(expression: str, document: dict[str, Any]) -> Any:
    return _interpreter.visit(compile_expression(expression).parsed, document)


def holds(expression: str, document: dict[str, Any]) -> bool:
    """True when the expression is truthy (JMESPath truthiness: not null, false, '' or [])."""
    value = evaluate(expression, document)
    return value not in (None, False, "", [], {})


def build_input(mapping: dict[str, str] | None, document: dict[str, Any]) -> dict[str, Any]:
    """A step's input: each field is an expression; with no mapping, the workflow input."""
    if mapping is None:
        return dict(document.get("input") or {})
    return {name: evaluate(expr, document) for name, expr in mapping.items()}
