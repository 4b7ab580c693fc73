"""Pieces that need no service: ids, helpers, local checks, batch splitting, routes."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest

from audit_manager_client import (
    AuditRejected,
    AuditRoute,
    InvalidEvent,
    actor,
    changes,
    make_event,
    outcome_for,
    prepare,
    resource,
    uuid7,
)
from audit_manager_client.client import _chunks, _classify, _retry_after


def test_uuid7_is_version_7_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    u = uuid.UUID(ids[0])
    assert u.version == 7 and u.variant == uuid.RFC_4122
    ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(ms / 1000 - dt.datetime.now(dt.timezone.utc).timestamp()) < 5


def test_prepare_fills_once_and_checks() -> None:
    ev = make_event(
        source="/s",
        type="t",
        actor=actor("u-1", name="U", roles=["r"]),
        action="a",
        outcome="success",
        resource=resource("beneficiary", "b-1", program="p"),
    )
    p = prepare(ev)
    assert p["specversion"] == "1.0" and p["time"].endswith("Z") and len(p["id"]) == 36
    assert prepare(p) == p, "an event already prepared keeps its id and time"
    assert p["data"]["resource"] == {"type": "beneficiary", "id": "b-1", "program": "p"}
    bad = dict(ev, data={**ev["data"], "outcome": "maybe"})
    with pytest.raises(InvalidEvent, match="outcome"):
        prepare(bad)
    with pytest.raises(InvalidEvent, match=r"actor\.id"):
        prepare(dict(ev, data={"action": "a", "outcome": "success"}))
    with pytest.raises(InvalidEvent, match="source"):
        prepare({k: v for k, v in ev.items() if k != "source"})


def test_time_from_datetime() -> None:
    when = dt.datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)
    ev = make_event(
        source="/s", type="t", actor=actor("u"), action="a", outcome="failure", time=when
    )
    assert ev["time"] == "2026-12-07T10:00:00.123456Z"


def test_changes() -> None:
    assert changes(
        {"a": 1, "b": 2, "pw": "x"}, {"a": 1, "b": 3, "c": 4, "pw": "y"}, redact=["pw"]
    ) == [
        {"field": "b", "old": 2, "new": 3},
        {"field": "pw", "old": "***", "new": "***"},
        {"field": "c", "old": None, "new": 4},
    ]


def test_retry_after_forms() -> None:
    assert _retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    assert _retry_after(httpx.Headers({})) is None
    date = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert _retry_after(date) == 0.0  # in the past


def test_chunks_respect_count_and_bytes() -> None:
    small = [b"x" * 10] * 1201
    assert [e - s for s, e in _chunks(small, 500, 4 << 20)] == [500, 500, 201]
    big = [b"x" * 1000] * 10
    sizes = [e - s for s, e in _chunks(big, 500, 3500)]
    assert sizes == [3, 3, 3, 1]
    assert [e - s for s, e in _chunks([b"x" * 5000], 500, 3500)] == [1], "alone if too big"


def test_routes_and_outcomes() -> None:
    pattern, names = AuditRoute("/items/{item_id}/files/{rest:path}").compile()
    m = pattern.match("/items/7/files/a/b.txt")
    assert (
        m and m.groupdict() == {"item_id": "7", "rest": "a/b.txt"} and names == ["item_id", "rest"]
    )
    assert not AuditRoute("/items/{id}").compile()[0].match("/items/1/extra")
    assert [outcome_for(s) for s in (200, 204, 401, 403, 404, 302, 500)] == [
        "success",
        "success",
        "denied",
        "denied",
        "failure",
        "failure",
        "failure",
    ]


def _error(status: int, code: str) -> httpx.Response:
    body = {"response": None, "errors": [{"errorCode": code, "errorMessage": "x"}]}
    return httpx.Response(status, json=body)


def test_a_body_timeout_is_retried_and_other_4xx_are_final() -> None:
    # 408 AUD-408: the body did not arrive in time and nothing was stored.
    outcome = _classify(_error(408, "AUD-408"))
    assert outcome.status == 408 and outcome.envelope is None
    with pytest.raises(AuditRejected) as refused:
        _classify(_error(422, "AUD-002"))
    assert refused.value.code == "AUD-002"
