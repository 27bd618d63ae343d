"""Collapsing a sandbox's refusals: the first ones of each window in full, the rest counted
per target and handed back once the window ends."""

from __future__ import annotations

import pytest

from sandboxes.egress.events import EgressEvent, RefusalGate

pytestmark = pytest.mark.shapes("embedded", "production")


def _refusal(host: str = "127.0.0.1", port: int = 5432, at: float = 0.0) -> EgressEvent:
    return EgressEvent(
        sandbox_key="sb-1",
        method="CONNECT",
        host=host,
        port=port,
        code="address",
        reason="loopback",
        status=403,
        address=host,
        started_at=at,
    )


def test_each_window_records_its_first_refusals_then_counts_the_rest():
    gate = RefusalGate(in_full=3, window_s=10)
    admitted = [gate.admit(_refusal(at=100 + i / 10), now=i / 10) for i in range(50)]
    assert admitted == [True] * 3 + [False] * 47
    assert gate.due(now=5) == []  # the window is still open
    (summary,) = gate.due(now=10)
    assert summary.count == 47
    assert summary.text() == "47 more refusals of 127.0.0.1:5432 in 4.6 s (loopback)"
    assert summary.as_dict()["address"] == "127.0.0.1" and summary.as_dict()["count"] == 47
    # the next window records its first ones in full again
    assert [gate.admit(_refusal(at=200), now=20 + i) for i in range(4)] == [True] * 3 + [False]


def test_forcing_writes_what_was_counted_without_a_new_allowance():
    gate = RefusalGate(in_full=2, window_s=10)
    for i in range(5):
        gate.admit(_refusal(), now=i)
    assert [s.count for s in gate.due(now=5, force=True)] == [3]
    assert gate.admit(_refusal(), now=6) is False


def test_targets_past_the_maximum_share_one_summary():
    gate = RefusalGate(in_full=0, window_s=10, targets_max=2)
    for port in range(1, 11):
        gate.admit(_refusal(port=port), now=1)
    gate.admit(_refusal(port=10), now=2)
    summaries = gate.due(now=11)
    assert [(s.what, s.count) for s in summaries] == [
        ("127.0.0.1:1", 1),
        ("127.0.0.1:2", 1),
        ("8 other targets", 9),
    ]
    assert summaries[2].as_dict()["host"] == "" and summaries[2].as_dict()["targets"] == 8
