"""Where an :class:`~audit_manager_client.Outbox` keeps events until audit-manager has them.

Three stores, one table layout (``seq`` orders the entries, ``id`` is the event's id,
``created_at`` Unix seconds, ``body`` the event's JSON):

- :class:`SQLiteStore`: a local SQLite file in WAL mode with ``synchronous=FULL``, so an
  entry is on disk when ``emit`` returns;
- :class:`SQLAlchemyStore` (``sqlalchemy`` extra): a table in the application's own database,
  written in the caller's transaction;
- :class:`DBAPIStore`: the same with a plain DB-API cursor (e.g. an Odoo ``env.cr``), no
  SQLAlchemy.

Entries the service refused for good (a 4xx for that event alone) are moved to
``<table>_dead`` with the error, never deleted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import OutboxFull


@dataclass(frozen=True)
class Entry:
    """One stored event."""

    seq: int
    id: str
    created_at: float
    body: bytes


@dataclass(frozen=True)
class StoreStats:
    depth: int
    """Entries waiting to be delivered."""
    oldest_created_at: float | None
    """Unix time the oldest waiting entry was written; ``None`` when empty."""
    dead: int
    """Entries the service refused for good, kept in the dead table."""


class Store(Protocol):
    """What an outbox needs from its storage."""

    def put(self, items: Sequence[tuple[str, bytes]], txn: Any, limit: int) -> None:
        """Stores ``(id, body)`` items durably, in ``txn`` when the store supports the
        caller's transaction; raises :class:`OutboxFull` when ``limit`` would be passed."""

    def peek(self, n: int) -> list[Entry]:
        """The ``n`` oldest entries, oldest first."""

    def delete(self, seqs: Sequence[int]) -> None: ...

    def bury(self, entry: Entry, status: int, code: str, message: str) -> None:
        """Moves an entry the service refused for good to the dead table."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


def _check_table_name(table: str) -> str:
    if not table.replace("_", "").isalnum() or table[0].isdigit():
        raise ValueError(f"table name must be an SQL identifier, got {table!r}")
    return table


def _full_check(
    span: tuple[Any, ...] | None, count: Callable[[], int], add: int, limit: int
) -> None:
    """Raises OutboxFull when ``add`` more entries would pass ``limit``.

    ``max(seq) - min(seq) + 1`` bounds the depth from above; only when that bound says "full"
    is the exact (slower) count taken. ``min`` and ``max`` are asked in two subqueries: each is
    then one index lookup (SQLite scans the whole table for ``SELECT min(x), max(x)``).
    """
    if span is None or span[0] is None:
        if add > limit:
            raise OutboxFull(0, limit)
        return
    upper = int(span[1]) - int(span[0]) + 1
    if upper + add <= limit:
        return
    depth = count()
    if depth + add > limit:
        raise OutboxFull(depth, limit)


class SQLiteStore:
    """A SQLite file (WAL, ``synchronous=FULL``): ``put`` returns after the commit's fsync.

    Several processes may share one file (SQLite locks it). Within a process every write
    (``put``, and the sender's deletes) goes through one connection under a lock, so a writer
    waits on that lock and is woken at once, instead of SQLite's sleep-and-retry busy handler;
    reads (``peek``, ``stats``) use a second connection and never block writers (WAL).
    """

    def __init__(self, path: str | os.PathLike[str], *, table: str = "audit_outbox") -> None:
        self.path = os.fspath(path)
        self.table = _check_table_name(table)
        self._lock = threading.Lock()
        self._writer = self._connect()
        self._reader_lock = threading.Lock()
        self._reader = self._connect()
        t = self.table
        with self._lock:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
                "created_at REAL NOT NULL, body TEXT NOT NULL)"
            )
            self._writer.execute(
                f"CREATE TABLE IF NOT EXISTS {t}_dead (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
                "created_at REAL NOT NULL, body TEXT NOT NULL, failed_at REAL NOT NULL, "
                "status INTEGER NOT NULL, code TEXT NOT NULL, message TEXT NOT NULL)"
            )
            self._writer.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA busy_timeout=30000")
        return c

    def put(self, items: Sequence[tuple[str, bytes]], txn: Any, limit: int) -> None:
        if txn is not None:
            raise TypeError("a SQLite outbox file has its own transactions; pass no txn")
        t = self.table
        now = time.time()
        with self._lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                span = c.execute(
                    f"SELECT (SELECT min(seq) FROM {t}), (SELECT max(seq) FROM {t})"
                ).fetchone()
                _full_check(
                    span,
                    lambda: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]),
                    len(items),
                    limit,
                )
                c.executemany(
                    f"INSERT INTO {t} (id, created_at, body) VALUES (?, ?, ?)",
                    [(i, now, b.decode()) for i, b in items],
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def peek(self, n: int) -> list[Entry]:
        with self._reader_lock:
            rows = self._reader.execute(
                f"SELECT seq, id, created_at, body FROM {self.table} ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [Entry(int(s), str(i), float(c), str(b).encode()) for s, i, c, b in rows]

    def delete(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(f"DELETE FROM {self.table} WHERE seq = ?", [(s,) for s in seqs])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def bury(self, entry: Entry, status: int, code: str, message: str) -> None:
        t = self.table
        with self._lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    f"INSERT INTO {t}_dead (seq, id, created_at, body, failed_at, status, code, "
                    "message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.seq,
                        entry.id,
                        entry.created_at,
                        entry.body.decode(),
                        time.time(),
                        status,
                        code,
                        message,
                    ),
                )
                c.execute(f"DELETE FROM {t} WHERE seq = ?", (entry.seq,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def stats(self) -> StoreStats:
        t = self.table
        with self._reader_lock:
            depth, oldest = self._reader.execute(
                f"SELECT count(*), min(created_at) FROM {t}"
            ).fetchone()
            (dead,) = self._reader.execute(f"SELECT count(*) FROM {t}_dead").fetchone()
        return StoreStats(int(depth), None if oldest is None else float(oldest), int(dead))

    def close(self) -> None:
        with self._lock:
            self._writer.close()
        with self._reader_lock:
            self._reader.close()


class DBAPIStore:
    """A table in the application's database through plain DB-API cursors, no SQLAlchemy.

    ``emit(event, txn=cursor)`` inserts with the caller's cursor, so the event commits or
    rolls back with the caller's transaction (an Odoo ``env.cr``, a psycopg cursor).
    ``transaction`` opens the sender's own unit of work: a context manager yielding a cursor
    and committing when it exits without an exception (``odoo.registry(db).cursor()``, or
    ``psycopg.connect(url)`` plus ``.cursor()``). ``paramstyle`` is ``"format"`` (``%s``,
    psycopg) or ``"qmark"`` (``?``, sqlite3). The table must exist: :meth:`ddl` gives
    PostgreSQL's statements, :meth:`create_tables` runs them.
    """

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Any]],
        *,
        table: str = "audit_outbox",
        paramstyle: str = "format",
    ) -> None:
        if paramstyle not in ("format", "qmark"):
            raise ValueError("paramstyle must be 'format' or 'qmark'")
        self.table = _check_table_name(table)
        self._transaction = transaction
        self._p = "%s" if paramstyle == "format" else "?"

    def ddl(self) -> list[str]:
        """PostgreSQL DDL for the two tables (idempotent)."""
        t = self.table
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {t}_dead (seq BIGINT PRIMARY KEY, id TEXT NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, body TEXT NOT NULL, "
            "failed_at DOUBLE PRECISION NOT NULL, status INTEGER NOT NULL, code TEXT NOT NULL, "
            "message TEXT NOT NULL)",
        ]

    def create_tables(self) -> None:
        with self._transaction() as cr:
            for stmt in self.ddl():
                cr.execute(stmt)

    def put(self, items: Sequence[tuple[str, bytes]], txn: Any, limit: int) -> None:
        if txn is None:
            with self._transaction() as cr:
                self._put(cr, items, limit)
        else:
            self._put(txn, items, limit)

    def _put(self, cr: Any, items: Sequence[tuple[str, bytes]], limit: int) -> None:
        t, p = self.table, self._p

        def count() -> int:
            cr.execute(f"SELECT count(*) FROM {t}")
            return int(cr.fetchone()[0])

        cr.execute(f"SELECT (SELECT min(seq) FROM {t}), (SELECT max(seq) FROM {t})")
        _full_check(tuple(cr.fetchone()), count, len(items), limit)
        now = time.time()
        for i, b in items:
            cr.execute(
                f"INSERT INTO {t} (id, created_at, body) VALUES ({p}, {p}, {p})",
                (i, now, b.decode()),
            )

    def peek(self, n: int) -> list[Entry]:
        with self._transaction() as cr:
            cr.execute(
                f"SELECT seq, id, created_at, body FROM {self.table} ORDER BY seq LIMIT {int(n)}"
            )
            rows = cr.fetchall()
        return [Entry(int(s), str(i), float(c), str(b).encode()) for s, i, c, b in rows]

    def delete(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._transaction() as cr:
            for s in seqs:
                cr.execute(f"DELETE FROM {self.table} WHERE seq = {self._p}", (s,))

    def bury(self, entry: Entry, status: int, code: str, message: str) -> None:
        t, p = self.table, self._p
        with self._transaction() as cr:
            cr.execute(
                f"INSERT INTO {t}_dead (seq, id, created_at, body, failed_at, status, code, "
                f"message) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
                (
                    entry.seq,
                    entry.id,
                    entry.created_at,
                    entry.body.decode(),
                    time.time(),
                    status,
                    code,
                    message,
                ),
            )
            cr.execute(f"DELETE FROM {t} WHERE seq = {p}", (entry.seq,))

    def stats(self) -> StoreStats:
        t = self.table
        with self._transaction() as cr:
            cr.execute(f"SELECT count(*), min(created_at) FROM {t}")
            depth, oldest = cr.fetchone()
            cr.execute(f"SELECT count(*) FROM {t}_dead")
            (dead,) = cr.fetchone()
        return StoreStats(int(depth), None if oldest is None else float(oldest), int(dead))

    def close(self) -> None:
        pass


@contextmanager
def _noop() -> Iterator[None]:
    yield
