"""Step conditions, routes and inputs, as JMESPath expressions (never ``eval``).

An expression sees one document::

    {"input": <workflow input>, "steps": {<step>: <output>, ...},
     "output": <this step's output>, "confidence": <this step's confidence>}

so ``output.intent == 'legal'`` or ``steps.triage.severity == 'high'`` read naturally. Literals
are quoted JMESPath-style: strings in single quotes, numbers and booleans in backticks. Compiling,
evaluating and the truthiness rule are ``switchyard.protocol.expressions`` (the tool host's
approval rules use the same).
"""

from __future__ import annotations

from typing import Any

from switchyard.protocol.expressions import compile_expression, evaluate, holds

__all__ = ["build_input", "compile_expression", "evaluate", "holds"]


def build_input(mapping: dict[str, str] | None, document: dict[str, Any]) -> dict[str, Any]:
    """A step's input: each field is an expression; with no mapping, the workflow input."""
    if mapping is None:
        return dict(document.get("input") or {})
    return {name: evaluate(expr, document) for name, expr in mapping.items()}
