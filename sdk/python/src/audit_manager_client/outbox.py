"""A durable outbox: ``emit`` writes the event locally and returns; a sender delivers it.

The request path pays for one local write (an fsynced SQLite commit, or an insert in the
caller's own transaction), never for audit-manager's latency or outages. The sender drains
the entries in order through an :class:`AuditClient` and deletes an entry only after its
202. A crash at any instant loses nothing: an entry is deleted only after the service
has it, and an entry sent twice (a crash between the 202 and the delete) is the same row,
because ``id`` and ``time`` were fixed when it was written.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .client import AuditClient, encode
from .errors import AuditRejected, AuditUnavailable
from .events import prepare
from .stores import Entry, SQLiteStore, Store

log = logging.getLogger("audit_manager_client.outbox")

# Refusals that hit every event alike (credentials, permissions, a wrong URL, a proxy's
# throttling): an outage to wait out and report, never a reason to move events to the dead
# table.
_SYSTEMIC_CODES = frozenset({"AUD-010", "AUD-011", "AUD-012", "AUD-404", "AUD-008"})
_SYSTEMIC_STATUS = frozenset({401, 403, 404, 405, 407, 408, 415, 429})


def _systemic(e: AuditRejected) -> bool:
    return e.code in _SYSTEMIC_CODES or e.status in _SYSTEMIC_STATUS


@dataclass(frozen=True)
class OutboxStats:
    """The outbox's state, for metrics and alerts."""

    depth: int
    """Entries waiting for delivery."""
    oldest_age: float | None
    """Seconds since the oldest waiting entry was written (``None`` when empty)."""
    dead: int
    """Entries the service refused for good (kept in the dead table)."""
    delivered_total: int
    """Entries this process delivered since it started."""
    failed_attempts_total: int
    """Send rounds that did not get through (service down, overloaded, credentials refused)."""
    last_error: str | None
    """The last delivery error, until a delivery succeeds again."""


@dataclass(frozen=True)
class DeadEntry:
    """An entry moved to the dead table: the service refused it with a 4xx."""

    id: str
    status: int
    code: str
    message: str
    body: bytes


def _store_for(target: Any) -> Store:
    if isinstance(target, (str, os.PathLike)):
        return SQLiteStore(target)
    mod = type(target).__module__
    if mod.startswith("sqlalchemy."):
        from .sqlalchemy_store import SQLAlchemyStore

        return SQLAlchemyStore(target)
    if all(hasattr(target, m) for m in ("put", "peek", "delete", "bury", "stats")):
        store: Store = target
        return store
    raise TypeError(
        "Outbox target must be a file path (SQLite), a SQLAlchemy Engine/Connection/Session "
        f"or a store; got {type(target)!r}"
    )


class Outbox:
    """Stores events durably before returning, and delivers them in the background.

    ``target``: a path (a SQLite file, WAL + ``synchronous=FULL``), a SQLAlchemy ``Engine``,
    ``Connection`` or ``Session`` (the table in the application's database, written in the
    caller's transaction), or a store (:class:`~audit_manager_client.DBAPIStore` for a plain
    DB-API cursor such as Odoo's).

    ``max_entries`` bounds the outbox: when it is full, ``emit`` raises
    :class:`~audit_manager_client.OutboxFull` and stores nothing; it never drops silently.

    Hooks: ``on_stats(OutboxStats)`` after every send round (depth, oldest entry's age),
    ``on_dead(DeadEntry)`` when the service refuses an event for good (it is kept in the dead
    table), ``on_error(Exception)`` when a send round fails. Hooks run on the sender's thread
    and must not raise.

    The background sender starts with :meth:`start` (or ``with Outbox(...) as outbox``);
    :meth:`run_until_empty` drains in the calling thread instead.
    """

    def __init__(
        self,
        target: Any,
        client: AuditClient,
        *,
        max_entries: int = 1_000_000,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        send_deadline: float | None = None,
        on_stats: Callable[[OutboxStats], None] | None = None,
        on_dead: Callable[[DeadEntry], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if max_entries < 1 or batch_size < 1:
            raise ValueError("max_entries and batch_size must be at least 1")
        self.store: Store = _store_for(target)
        self.client = client
        self.max_entries = max_entries
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.send_deadline = send_deadline
        self.on_stats = on_stats
        self.on_dead = on_dead
        self.on_error = on_error
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._delivered = 0
        self._failed = 0
        self._last_error: str | None = None

    # -- the request path ------------------------------------------------------------------

    def emit(self, event: Mapping[str, Any], *, txn: Any = None) -> str:
        """Stores the event (``id`` and ``time`` filled now) and returns its id once the write
        is durable: committed and fsynced for SQLite; for a table in the caller's database,
        part of ``txn`` (or of the bound ``Connection``/``Session``), committed with it."""
        ev = prepare(event)
        self.store.put([(ev["id"], encode(ev))], txn, self.max_entries)
        self._wake.set()
        return str(ev["id"])

    def emit_many(self, events: Sequence[Mapping[str, Any]], *, txn: Any = None) -> list[str]:
        """Stores several events in one write (all or none); returns their ids."""
        prepared = [prepare(e) for e in events]
        self.store.put([(e["id"], encode(e)) for e in prepared], txn, self.max_entries)
        self._wake.set()
        return [str(e["id"]) for e in prepared]

    # -- delivery --------------------------------------------------------------------------

    def send_once(self) -> int:
        """Sends the oldest entries (up to ``batch_size``) and deletes what was accepted.

        Returns how many were delivered (0: empty). Raises :class:`AuditUnavailable` or a
        systemic :class:`AuditRejected` (401/403) when the round did not get through; entries
        the service refuses for good are moved to the dead table and reported to ``on_dead``.
        """
        with self._send_lock:
            entries = self.store.peek(self.batch_size)
            if not entries:
                return 0
            try:
                accepted = self.client.send_prepared_batch(
                    [e.id for e in entries], [e.body for e in entries], deadline=self.send_deadline
                )
            except AuditUnavailable as e:
                self.store.delete([x.seq for x in entries[: len(e.accepted)]])
                self._delivered += len(e.accepted)
                raise
            except AuditRejected as e:
                done = len(e.accepted)
                self.store.delete([x.seq for x in entries[:done]])
                self._delivered += done
                if _systemic(e):
                    raise
                # One event of the batch is bad: send the rest one by one, so only the
                # refused ones go to the dead table.
                return done + self._one_by_one(entries[done:])
            self.store.delete([x.seq for x in entries[: len(accepted)]])
            self._delivered += len(accepted)
            return len(accepted)

    def _one_by_one(self, entries: Sequence[Entry]) -> int:
        n = 0
        for entry in entries:
            try:
                self.client.send_prepared(entry.id, entry.body, deadline=self.send_deadline)
            except AuditRejected as e:
                if _systemic(e):
                    raise
                self.store.bury(entry, e.status, e.code, e.message)
                log.error("audit event %s refused for good: %s", entry.id, e)
                if self.on_dead is not None:
                    self.on_dead(DeadEntry(entry.id, e.status, e.code, e.message, entry.body))
                continue
            self.store.delete([entry.seq])
            self._delivered += 1
            n += 1
        return n

    def run_until_empty(self, timeout: float) -> int:
        """Delivers in the calling thread until the outbox is empty; returns how many this call
        delivered. Raises the last delivery error (:class:`AuditUnavailable`, ...) if the
        outbox is not empty when ``timeout`` seconds have passed (``TimeoutError`` when it
        simply had more than could be sent in time)."""
        until = time.monotonic() + timeout
        delivered = 0
        attempt = 0
        while True:
            try:
                n = self.send_once()
            except (AuditUnavailable, AuditRejected) as e:
                self._note_failure(e)
                attempt += 1
                wait = self._backoff(attempt)
                if time.monotonic() + wait >= until:
                    raise
                time.sleep(wait)
                continue
            attempt = 0
            self._last_error = None
            delivered += n
            if n == 0:
                return delivered
            if time.monotonic() >= until:
                raise TimeoutError(
                    f"outbox not empty after {timeout}s ({delivered} delivered by this call)"
                )

    def _backoff(self, attempt: int) -> float:
        cap: float = min(self.retry_max, self.retry_base * 2.0 ** (attempt - 1))
        return random.uniform(0.5, 1.0) * cap

    def _note_failure(self, e: Exception) -> None:
        self._failed += 1
        self._last_error = str(e)
        if self.on_error is not None:
            try:
                self.on_error(e)
            except Exception:
                log.exception("outbox on_error hook raised")

    def _publish_stats(self) -> None:
        if self.on_stats is None:
            return
        try:
            self.on_stats(self.stats())
        except Exception:
            log.exception("outbox on_stats hook raised")

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                n = self.send_once()
            except Exception as e:
                if isinstance(e, (AuditUnavailable, AuditRejected)):
                    log.warning("audit outbox: delivery failed, will retry: %s", e)
                else:
                    log.exception("audit outbox: unexpected error in the sender")
                self._note_failure(e)
                self._publish_stats()
                attempt += 1
                self._stop.wait(self._backoff(attempt))
                continue
            attempt = 0
            self._last_error = None
            if n:
                self._publish_stats()
            else:
                self._publish_stats()
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def start(self) -> Outbox:
        """Starts the background sender (a daemon thread); idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="audit-outbox-sender", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the background sender (what is not sent stays stored for next time)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.store.close()

    def __enter__(self) -> Outbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- observability ---------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        """Depth, age of the oldest entry, dead entries and counters (one store query)."""
        s = self.store.stats()
        age = None if s.oldest_created_at is None else max(0.0, time.time() - s.oldest_created_at)
        return OutboxStats(
            depth=s.depth,
            oldest_age=age,
            dead=s.dead,
            delivered_total=self._delivered,
            failed_attempts_total=self._failed,
            last_error=self._last_error,
        )

    def prometheus(self, prefix: str = "audit_outbox") -> str:
        """The stats in Prometheus text format, to append to an application's ``/metrics``."""
        s = self.stats()
        lines = [
            f"# TYPE {prefix}_depth gauge",
            f"{prefix}_depth {s.depth}",
            f"# TYPE {prefix}_oldest_age_seconds gauge",
            f"{prefix}_oldest_age_seconds {s.oldest_age or 0.0:.3f}",
            f"# TYPE {prefix}_dead gauge",
            f"{prefix}_dead {s.dead}",
            f"# TYPE {prefix}_delivered_total counter",
            f"{prefix}_delivered_total {s.delivered_total}",
            f"# TYPE {prefix}_failed_attempts_total counter",
            f"{prefix}_failed_attempts_total {s.failed_attempts_total}",
        ]
        return "\n".join(lines) + "\n"
