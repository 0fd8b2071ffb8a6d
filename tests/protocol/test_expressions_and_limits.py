"""One truthiness rule for routes and approvals, and refusals that say the real reason."""

from __future__ import annotations

import pytest

from switchyard.protocol import grants
from switchyard.protocol.errors import LimitExceededError
from switchyard.protocol.expressions import holds, truthy


def test_expressions_follow_jmespath_truthiness() -> None:
    assert [truthy(v) for v in (None, False, "", [], {})] == [False] * 5
    assert [truthy(v) for v in (0, 0.0, "0", [0], {"a": None}, True)] == [True] * 6
    assert holds("args.amount", {"args": {"amount": 0}})  # 0 holds, as in JMESPath
    assert not holds("args.missing", {"args": {}})


def _grant(limit: float) -> grants.Grant:
    return grants.Grant(id="g", workflow_id="w", task_id="t", role="r", tools=["refund"],
                        budget=1, issued_at=0, expires_at=1, issuer="",
                        limits={"refund": {"amount": limit}})


@pytest.mark.parametrize("value, said", [
    ("50", "amount must be a number to be checked against its granted limit of 1000, not '50' (str)"),
    (True, "amount must be a number to be checked against its granted limit of 1000, not True (bool)"),
    (5000, "amount of 5000 exceeds the granted limit of 1000"),
])
def test_limits_refusal_says_the_real_reason(value: object, said: str) -> None:
    with pytest.raises(LimitExceededError) as caught:
        grants.check_limits(_grant(1000), "refund", {"amount": value})
    assert caught.value.message == f"refund: {said}"
    assert caught.value.code == "limit_exceeded"


def test_limits_pass_a_number_within_the_limit_and_an_absent_argument() -> None:
    grants.check_limits(_grant(1000), "refund", {"amount": 50})
    grants.check_limits(_grant(1000), "refund", {})
