"""The journal's pure rules: what links records, and what a changed, removed or inserted record
looks like to ``read_all``."""

from __future__ import annotations

import pytest

from switchyard.protocol import Result, Subjects, WorkflowRequest, encode
from switchyard.protocol.audit import digest
from switchyard.protocol.headers import EXPECTED_LAST_SUBJECT_SEQ
from switchyard.protocol.journal import Record, parse_stamp, read_all

S = Subjects("jt")
WID = "w1"


def chain(n: int) -> list[Record]:
    """A well-formed journal: the submission, then ``n`` results, each linked to the one before."""
    req = WorkflowRequest(id=WID, workflow="flow", input={}, submitted_at=1.0)
    records = [Record(seq=3, subject=S.submit(WID), data=encode(req), stamp_ns=10**18,
                      expected="0", expected_subject=S.journal(WID))]
    for i in range(n):
        before = records[-1]
        result = Result(task_id=f"{WID}:s{i}:1", workflow_id=WID, step=f"s{i}", role="r",
                        attempt=1, status="ok", after=before.seq, prev=before.digest)
        records.append(Record(seq=before.seq + 2, subject=S.result(WID, "r"),
                              data=encode(result), stamp_ns=10**18 + i,
                              expected=str(before.seq), expected_subject=S.journal(WID)))
    return records


def test_journal_an_untouched_chain_reads_whole() -> None:
    c = read_all(chain(3), S, WID)
    assert c.problems == [] and [r.ok for r in c.reads] == [True] * 4
    assert c.head == digest(chain(3)[-1].data)


def test_journal_a_changed_record_breaks_the_link_after_it() -> None:
    records = chain(3)
    changed = records[1].data.replace(b'"ok"', b'"error"')
    records[1] = Record(
        seq=records[1].seq, subject=records[1].subject, data=changed,
        stamp_ns=records[1].stamp_ns, expected=records[1].expected,
        expected_subject=records[1].expected_subject)
    c = read_all(records, S, WID)
    assert len(c.problems) == 1 and c.problems[0].startswith(f"seq {records[2].seq} (result)")
    assert "names seq" in c.problems[0]


def test_journal_a_removed_record_breaks_the_link_after_it() -> None:
    records = chain(3)
    del records[2]
    c = read_all(records, S, WID)
    assert [p.split(":")[0] for p in c.problems] == [f"seq {records[2].seq} (result)"]


def test_journal_a_record_inserted_around_the_writers_is_refused() -> None:
    records = chain(2)
    forged = Result(task_id=f"{WID}:x:1", workflow_id=WID, step="x", role="r", attempt=1,
                    status="ok", after=records[-1].seq, prev="0" * 64)
    records.append(Record(seq=99, subject=S.result(WID, "r"), data=encode(forged), stamp_ns=1))
    c = read_all(records, S, WID)
    assert not c.reads[-1].ok and "names seq" in c.reads[-1].refused
    # even with the right link, a record appended without the expected sequence is refused
    honest_link = Result(task_id=f"{WID}:x:1", workflow_id=WID, step="x", role="r", attempt=1,
                         status="ok", after=records[-2].seq, prev=records[-2].digest)
    records[-1] = Record(seq=99, subject=S.result(WID, "r"), data=encode(honest_link), stamp_ns=1)
    c = read_all(records, S, WID)
    assert c.reads[-1].refused == "not appended with the expected sequence over its journal"


@pytest.mark.parametrize("subject, why", [
    (S.result("w2", "r"), "is not on journal w1"),
    ("jt.journal.w1.bogus", "not a kind of journal record"),
    ("jt.journal.w1.result.q", "a result of role 'r' on the subject of role 'q'"),
])
def test_journal_a_record_on_the_wrong_subject_is_refused(subject: str, why: str) -> None:
    records = chain(1)
    records[1] = Record(seq=records[1].seq, subject=subject, data=records[1].data,
                        stamp_ns=1, expected=records[1].expected,
                        expected_subject=records[1].expected_subject)
    assert why in read_all(records, S, WID).reads[1].refused


def test_journal_a_second_submission_and_an_empty_journal_are_problems() -> None:
    records = chain(0)
    records.append(Record(seq=9, subject=S.submit(WID), data=records[0].data, stamp_ns=1,
                          expected=str(records[0].seq), expected_subject=S.journal(WID)))
    assert "a second submission" in read_all(records, S, WID).problems[0]
    assert read_all([], S, WID).problems == ["workflow w1 has no journal"]
    assert EXPECTED_LAST_SUBJECT_SEQ == "Nats-Expected-Last-Subject-Sequence"


def test_journal_stamps_keep_nanoseconds() -> None:
    assert parse_stamp("2026-12-01T11:08:45.211565935Z") == 1796123325_211565935
    assert parse_stamp("2026-12-01T11:08:45Z") == 1796123325_000000000
    assert parse_stamp("2026-12-01T12:08:45.5+01:00") == 1796123325_500000000
