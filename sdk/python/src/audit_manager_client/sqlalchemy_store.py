"""The outbox table in the application's own database, through SQLAlchemy (the
``sqlalchemy`` extra): ``Outbox.emit(event, txn=session)`` inserts in the caller's
transaction, so the audit event commits or rolls back with the business change."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from .stores import Entry, StoreStats, _check_table_name, _full_check


def outbox_tables(
    metadata: sa.MetaData | None = None, table: str = "audit_outbox"
) -> tuple[sa.Table, sa.Table]:
    """The outbox table and its dead table, on ``metadata`` (add them to your own metadata to
    let Alembic or ``metadata.create_all`` manage them)."""
    md = metadata if metadata is not None else sa.MetaData()
    seq_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    live = sa.Table(
        _check_table_name(table),
        md,
        sa.Column("seq", seq_type, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    dead = sa.Table(
        f"{table}_dead",
        md,
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.Float(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    return live, dead


class SQLAlchemyStore:
    """The outbox as a table reached through SQLAlchemy.

    ``bind`` is an ``Engine``, a ``Connection`` or a ``Session``: the sender uses the engine
    behind it with transactions of its own; ``emit`` uses the ``txn`` it is given (a
    ``Connection`` or ``Session`` inside the caller's transaction), else ``bind`` itself when
    that is a ``Connection``/``Session``, else a short transaction of its own.
    ``create=True`` creates the tables if they are missing.
    """

    def __init__(
        self,
        bind: Engine | Connection | Session,
        *,
        table: str = "audit_outbox",
        metadata: sa.MetaData | None = None,
        create: bool = True,
    ) -> None:
        self.table, self.dead = outbox_tables(metadata, table)
        self._default_txn: Connection | Session | None = None
        if isinstance(bind, Engine):
            self.engine = bind
        elif isinstance(bind, Connection):
            self.engine = bind.engine
            self._default_txn = bind
        elif isinstance(bind, Session):
            engine = bind.get_bind()
            self.engine = engine if isinstance(engine, Engine) else engine.engine
            self._default_txn = bind
        else:
            raise TypeError(f"expected an Engine, Connection or Session, got {type(bind)!r}")
        if create:
            with self.engine.begin() as c:
                self.table.create(c, checkfirst=True)
                self.dead.create(c, checkfirst=True)

    def put(self, items: Sequence[tuple[str, bytes]], txn: Any, limit: int) -> None:
        target = txn if txn is not None else self._default_txn
        if target is None:
            with self.engine.begin() as c:
                self._put(c, items, limit)
        elif isinstance(target, (Connection, Session)):
            self._put(target, items, limit)
        else:
            raise TypeError(f"txn must be a SQLAlchemy Connection or Session, got {type(target)!r}")

    def _put(self, c: Connection | Session, items: Sequence[tuple[str, bytes]], limit: int) -> None:
        t = self.table
        span = c.execute(
            sa.select(
                sa.select(sa.func.min(t.c.seq)).scalar_subquery(),
                sa.select(sa.func.max(t.c.seq)).scalar_subquery(),
            )
        ).one()

        def count() -> int:
            return int(c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())

        _full_check(tuple(span), count, len(items), limit)
        now = time.time()
        c.execute(
            t.insert(),
            [{"id": i, "created_at": now, "body": b.decode()} for i, b in items],
        )

    def peek(self, n: int) -> list[Entry]:
        t = self.table
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(t.c.seq, t.c.id, t.c.created_at, t.c.body).order_by(t.c.seq).limit(n)
            ).all()
        return [Entry(int(s), str(i), float(ca), str(b).encode()) for s, i, ca, b in rows]

    def delete(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self.engine.begin() as c:
            c.execute(self.table.delete().where(self.table.c.seq.in_(list(seqs))))

    def bury(self, entry: Entry, status: int, code: str, message: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                self.dead.insert(),
                [
                    {
                        "seq": entry.seq,
                        "id": entry.id,
                        "created_at": entry.created_at,
                        "body": entry.body.decode(),
                        "failed_at": time.time(),
                        "status": status,
                        "code": code,
                        "message": message,
                    }
                ],
            )
            c.execute(self.table.delete().where(self.table.c.seq == entry.seq))

    def stats(self) -> StoreStats:
        t = self.table
        with self.engine.connect() as c:
            depth, oldest = c.execute(
                sa.select(sa.func.count(), sa.func.min(t.c.created_at)).select_from(t)
            ).one()
            dead = c.execute(sa.select(sa.func.count()).select_from(self.dead)).scalar_one()
        return StoreStats(int(depth), None if oldest is None else float(oldest), int(dead))

    def close(self) -> None:
        pass
