"""Typed errors. Match on ``code`` (``AUD-…``), never on the message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorDetail:
    """One entry of the envelope's ``errors``."""

    code: str
    message: str


class AuditError(Exception):
    """Base class of every error this package raises about delivering events."""


class AuditRejected(AuditError):
    """The service refused the request with a 4xx: sending it again would not help.

    ``code`` is the first error's code (``"AUD-002"`` for an invalid event), ``message`` its
    message, ``errors`` every error of the answer, ``status`` the HTTP status. ``accepted``
    holds the ids that were stored before the refusal when one ``emit_batch`` call needed
    several requests (a batch over the service's limits is not atomic as a whole).
    """

    def __init__(
        self,
        status: int,
        errors: Sequence[ErrorDetail],
        accepted: Sequence[str] = (),
    ) -> None:
        self.status = status
        self.errors: tuple[ErrorDetail, ...] = tuple(errors) or (
            ErrorDetail(f"HTTP-{status}", f"HTTP {status} without an error envelope"),
        )
        self.code = self.errors[0].code
        self.message = self.errors[0].message
        self.accepted: tuple[str, ...] = tuple(accepted)
        super().__init__(f"{self.code} (HTTP {status}): {self.message}")


class AuditUnavailable(AuditError):
    """The service did not accept the request before the deadline: connection errors,
    timeouts or 5xx answers (503 AUD-004 overload, AUD-005 not ready, ...) until it passed.

    Nothing is known to be lost: the same event (same ``id`` and ``time``) may be sent again
    later and will be one row. ``last_status``/``last_code`` describe the last attempt
    (``None`` when it got no HTTP answer), ``attempts`` how many were made.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        last_status: int | None = None,
        last_code: str | None = None,
        accepted: Sequence[str] = (),
    ) -> None:
        self.attempts = attempts
        self.last_status = last_status
        self.last_code = last_code
        self.accepted: tuple[str, ...] = tuple(accepted)
        super().__init__(message)


class OutboxFull(AuditError):
    """The outbox holds ``max_entries`` events: the event was **not** stored.

    Raised rather than dropping anything silently; the caller decides (fail the request,
    shed load, alert). The depth metric and hooks show it coming.
    """

    def __init__(self, depth: int, limit: int) -> None:
        self.depth = depth
        self.limit = limit
        super().__init__(f"audit outbox is full ({depth} of {limit} entries); event not stored")
