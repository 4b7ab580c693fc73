"""Building audit events: CloudEvents 1.0 envelopes whose ``data`` says who did what.

Field names are the ones of audit-manager's contract (``docs/contract.md``): the envelope
(``specversion``, ``id``, ``source``, ``type``, ``subject``, ``time``, ...) and in ``data``
``actor``, ``action``, ``outcome``, ``resource``, ``reason``, ``changes``.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Event = dict[str, Any]
"""An audit event: a CloudEvents 1.0 envelope as a JSON-ready ``dict``."""

Outcome = Literal["success", "failure", "denied"]
ActorType = Literal["user", "system", "service", "anonymous"]

OUTCOMES: frozenset[str] = frozenset({"success", "failure", "denied"})

_uuid7_lock = threading.Lock()
_uuid7_last_ms = 0
_uuid7_seq = 0


def uuid7() -> str:
    """A UUIDv7 (RFC 9562) as a string: 48-bit Unix milliseconds, then random bits.

    Ids made by one process are strictly increasing (a 12-bit counter in ``rand_a`` orders
    ids made within the same millisecond), so they also sort in emission order.
    """
    global _uuid7_last_ms, _uuid7_seq
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _uuid7_last_ms:
            _uuid7_seq += 1
            if _uuid7_seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                _uuid7_last_ms += 1
                _uuid7_seq = 0
            ms = _uuid7_last_ms
        else:
            _uuid7_last_ms = ms
            _uuid7_seq = 0
        seq = _uuid7_seq
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds and ``Z``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _rfc3339(value: _dt.datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    value = value.astimezone(_dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}Z"


def actor(
    id: str,
    type: ActorType = "user",
    *,
    name: str | None = None,
    roles: Iterable[str] | None = None,
    ip: str | None = None,
    session_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``data.actor``: who did it. ``id`` is required; other keys are kept by the service."""
    out: dict[str, Any] = {"type": type, "id": id}
    if name is not None:
        out["name"] = name
    if roles is not None:
        out["roles"] = list(roles)
    if ip is not None:
        out["ip"] = ip
    if session_id is not None:
        out["session_id"] = session_id
    out.update(extra)
    return out


def resource(type: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
    """``data.resource``: what it was done to. ``type`` is required when present."""
    out: dict[str, Any] = {"type": type}
    if id is not None:
        out["id"] = id
    out.update(extra)
    return out


def change(field: str, old: Any = None, new: Any = None) -> dict[str, Any]:
    """One entry of ``data.changes``."""
    return {"field": field, "old": old, "new": new}


def changes(
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    *,
    redact: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``data.changes`` from two snapshots: one ``{field, old, new}`` per field that differs.

    Fields named in ``redact`` are listed as changed with ``"***"`` for both values, so the
    record says *that* they changed without storing secrets.
    """
    before = before or {}
    after = after or {}
    hidden = set(redact)
    out: list[dict[str, Any]] = []
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key in hidden:
            out.append(change(key, "***", "***"))
        else:
            out.append(change(key, old, new))
    return out


def make_event(
    *,
    source: str,
    type: str,
    actor: Mapping[str, Any],
    action: str,
    outcome: Outcome,
    subject: str | None = None,
    resource: Mapping[str, Any] | None = None,
    reason: str | None = None,
    changes: list[dict[str, Any]] | None = None,
    time: _dt.datetime | str | None = None,
    id: str | None = None,
    traceparent: str | None = None,
    data: Mapping[str, Any] | None = None,
    **extensions: Any,
) -> Event:
    """An audit event with the contract's field names.

    ``id`` and ``time`` are left out unless given: the client and the outbox fill them
    (UUIDv7, now) before the first attempt, so every retry carries the same values.
    ``data`` adds further keys (``context``, ...); ``extensions`` adds CloudEvents extension
    attributes to the envelope.
    """
    body: dict[str, Any] = dict(data or {})
    body["actor"] = dict(actor)
    body["action"] = action
    body["outcome"] = outcome
    if resource is not None:
        body["resource"] = dict(resource)
    if reason is not None:
        body["reason"] = reason
    if changes is not None:
        body["changes"] = changes
    event: Event = {"specversion": "1.0", "source": source, "type": type}
    if id is not None:
        event["id"] = id
    if subject is not None:
        event["subject"] = subject
    if time is not None:
        event["time"] = _rfc3339(time)
    if traceparent is not None:
        event["traceparent"] = traceparent
    event.update(extensions)
    event["data"] = body
    return event


class InvalidEvent(ValueError):
    """The event would certainly be refused by the service (422); raised before anything is
    sent or stored, so an outbox never holds an event that can never be delivered."""


def prepare(event: Mapping[str, Any]) -> Event:
    """A copy of ``event`` ready to send: ``specversion``, ``id`` (UUIDv7) and ``time`` filled
    when absent, and the checks that would certainly fail at the service made locally.

    Filling ``id`` and ``time`` once, before the first attempt, is what makes retries safe:
    the service's primary key is ``(id, occurred_at)``, so every replay is the same row.
    """
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"an event is a mapping, got {type(event).__name__}")
    out: Event = dict(event)
    if out.get("specversion") is None:
        out["specversion"] = "1.0"
    if not out.get("id"):
        out["id"] = uuid7()
    elif not isinstance(out["id"], str):
        raise InvalidEvent("id: must be a string")
    if out.get("time") is None:
        out["time"] = now_rfc3339()
    elif isinstance(out["time"], _dt.datetime):
        out["time"] = _rfc3339(out["time"])
    for key in ("source", "type"):
        if not isinstance(out.get(key), str):
            raise InvalidEvent(f"{key}: required string")
    data = out.get("data")
    if not isinstance(data, Mapping):
        raise InvalidEvent("data: must be an object with actor, action and outcome")
    act = data.get("actor")
    if not isinstance(act, Mapping) or not isinstance(act.get("id"), str):
        raise InvalidEvent("data.actor.id: required string")
    if not isinstance(data.get("action"), str):
        raise InvalidEvent("data.action: required string")
    if data.get("outcome") not in OUTCOMES:
        raise InvalidEvent(
            f"data.outcome: must be one of success, failure, denied (got {data.get('outcome')!r})"
        )
    return out
