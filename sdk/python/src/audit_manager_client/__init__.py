"""Emitter SDK for audit-manager.

- :class:`AuditClient` / :class:`AsyncAuditClient`: send events, retrying what may succeed
  later (connection errors, timeouts, 503 with ``Retry-After``) until a deadline; a 4xx raises
  :class:`AuditRejected` carrying the ``AUD-…`` code.
- :class:`Outbox`: store events durably (a SQLite file, or a table in your own database in
  your transaction) and deliver them in the background.
- :class:`AuditMiddleware`: one audit event per matched request of an ASGI app.
"""

from ._version import __version__
from .client import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    AsyncAuditClient,
    AuditClient,
    RetryInfo,
)
from .errors import AuditError, AuditRejected, AuditUnavailable, ErrorDetail, OutboxFull
from .events import (
    Event,
    InvalidEvent,
    actor,
    change,
    changes,
    make_event,
    now_rfc3339,
    prepare,
    resource,
    uuid7,
)
from .middleware import AuditMiddleware, AuditRoute, default_actor, outcome_for
from .outbox import DeadEntry, Outbox, OutboxStats
from .stores import DBAPIStore, Entry, SQLiteStore, Store, StoreStats

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "AsyncAuditClient",
    "AuditClient",
    "AuditError",
    "AuditMiddleware",
    "AuditRejected",
    "AuditRoute",
    "AuditUnavailable",
    "DBAPIStore",
    "DeadEntry",
    "Entry",
    "ErrorDetail",
    "Event",
    "InvalidEvent",
    "Outbox",
    "OutboxFull",
    "OutboxStats",
    "RetryInfo",
    "SQLiteStore",
    "Store",
    "StoreStats",
    "__version__",
    "actor",
    "change",
    "changes",
    "default_actor",
    "make_event",
    "now_rfc3339",
    "outcome_for",
    "prepare",
    "resource",
    "uuid7",
]
