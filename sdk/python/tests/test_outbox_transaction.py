"""The outbox in the application's own database, in the caller's transaction: a rolled-back
business transaction leaves no audit event, a committed one always yields one row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import AuditServer, PgDb, event
from sqlalchemy.orm import Session

from audit_manager_client import AuditClient, DBAPIStore, Outbox


@pytest.fixture
def app_db() -> Iterator[PgDb]:
    """The application's own database (not the audit database)."""
    d = PgDb("sdk_app")
    try:
        yield d
    finally:
        d.drop()


def _business_table(engine: sa.Engine) -> sa.Table:
    md = sa.MetaData()
    t = sa.Table(
        "beneficiaries",
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("phone", sa.Text),
    )
    md.create_all(engine)
    return t


def test_sqlalchemy_connection_rollback_and_commit(
    server: AuditServer, db: PgDb, app_db: PgDb
) -> None:
    engine = sa.create_engine(app_db.url.replace("postgres://", "postgresql+psycopg://"))
    people = _business_table(engine)
    outbox = Outbox(engine, AuditClient(server.url))

    committed: list[str] = []
    rolled_back: list[str] = []
    for i in range(20):
        with engine.connect() as conn, conn.begin() as tx:
            conn.execute(people.insert().values(id=f"b-{i}", phone="1"))
            event_id = outbox.emit(event(i), txn=conn)
            if i % 2:
                tx.rollback()
                rolled_back.append(event_id)
            else:
                committed.append(event_id)  # committed when the block ends
    # A transaction that fails after the audit write rolls the audit event back too.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        rolled_back.append(outbox.emit(event("dup"), txn=conn))
        conn.execute(people.insert().values(id="b-0", phone="dup"))  # duplicate key

    assert outbox.stats().depth == len(committed)
    assert outbox.run_until_empty(timeout=30) == len(committed)
    db.wait_for_ids(committed)
    stored = set(db.audit_ids())
    assert not stored & set(rolled_back)
    assert stored == set(committed)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(people)).scalar_one() == 10
    engine.dispose()


def test_sqlalchemy_session(server: AuditServer, db: PgDb, app_db: PgDb) -> None:
    engine = sa.create_engine(app_db.url.replace("postgres://", "postgresql+psycopg://"))
    people = _business_table(engine)
    outbox = Outbox(engine, AuditClient(server.url))
    with Session(engine) as session:
        session.execute(people.insert().values(id="s-1", phone="1"))
        kept = outbox.emit(event("s-1"), txn=session)
        session.commit()
        session.execute(people.insert().values(id="s-2", phone="1"))
        dropped = outbox.emit(event("s-2"), txn=session)
        session.rollback()
    assert outbox.run_until_empty(timeout=30) == 1
    db.wait_for_ids([kept])
    assert dropped not in db.audit_ids()
    engine.dispose()


def test_dbapi_cursor_without_sqlalchemy(server: AuditServer, db: PgDb, app_db: PgDb) -> None:
    """What an Odoo module does with ``env.cr``: a plain DB-API cursor (psycopg here)."""

    @contextmanager
    def transaction() -> Iterator[Any]:
        with psycopg.connect(app_db.url) as conn, conn.cursor() as cr:
            yield cr  # psycopg commits when the connection block ends without an exception

    store = DBAPIStore(transaction)
    store.create_tables()
    outbox = Outbox(store, AuditClient(server.url))
    with psycopg.connect(app_db.url) as conn:
        conn.execute("CREATE TABLE partners (id text primary key)")
        conn.commit()
        with conn.cursor() as cr:
            cr.execute("INSERT INTO partners VALUES ('p-1')")
            kept = outbox.emit(event("p-1"), txn=cr)
        conn.commit()
        with conn.cursor() as cr:
            cr.execute("INSERT INTO partners VALUES ('p-2')")
            dropped = outbox.emit(event("p-2"), txn=cr)
        conn.rollback()
    assert outbox.run_until_empty(timeout=30) == 1
    db.wait_for_ids([kept])
    assert dropped not in db.audit_ids()
