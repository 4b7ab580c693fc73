"""Test harness: the real ``audit-manager`` binary, a PostgreSQL database per test.

The binary comes from ``$AUDIT_MANAGER_BIN``, else ``target/debug/audit-manager`` of the
repository. Each server runs every role (ingest, forward, sink, maintain) with the embedded
development Kafka broker, a spool in a temporary directory, its own database
``sdk_test_<random>`` on ``$TEST_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``),
and binds port 0 itself: the harness reads the address from its "audit-manager listening" log
line, so no port is picked by the test and then raced for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]
PG_ADMIN = os.environ.get("TEST_PG_URL", "postgres://postgres@127.0.0.1:5432")
LISTEN_DEADLINE = 60.0


def audit_bin() -> str:
    path = os.environ.get("AUDIT_MANAGER_BIN") or str(REPO / "target" / "debug" / "audit-manager")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"audit-manager binary not found at {path}: run `cargo build --bin audit-manager` "
            "or set AUDIT_MANAGER_BIN"
        )
    return path


def wait_until(what: str, check: Callable[[], Any], deadline: float, every: float = 0.1) -> Any:
    """Polls ``check`` until it returns something truthy; fails the test after ``deadline`` s."""
    until = time.monotonic() + deadline
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= until:
            pytest.fail(f"{what}: not true after {deadline}s (last: {last!r})")
        time.sleep(every)


class PgDb:
    """A fresh database, dropped (with its connections) at the end."""

    def __init__(self, prefix: str = "sdk_test") -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        self.url = f"{PG_ADMIN}/{self.name}"
        with psycopg.connect(f"{PG_ADMIN}/postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        with psycopg.connect(f"{PG_ADMIN}/postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; ``[]`` while the table does not exist yet."""
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                return list(c.execute(sql, params).fetchall())
        except psycopg.errors.UndefinedTable:
            return []

    def audit_ids(self) -> list[str]:
        return [r[0] for r in self.query("SELECT id FROM audit_events")]

    def count(self) -> int:
        rows = self.query("SELECT count(*) FROM audit_events")
        return int(rows[0][0]) if rows else 0

    def wait_for_ids(self, ids: Sequence[str], deadline: float = 60.0) -> None:
        """Waits until every id in ``ids`` has a row."""
        want = set(ids)

        def done() -> bool:
            return want <= set(self.audit_ids())

        wait_until(f"{len(want)} ids stored in audit_events", done, deadline, every=0.25)


class AuditServer:
    """``audit-manager serve`` as a child process."""

    def __init__(
        self,
        tmp: Path,
        db: PgDb | None,
        env: dict[str, str] | None = None,
        roles: str = "ingest,forward,sink,maintain",
    ) -> None:
        self.tmp = tmp
        self.db = db
        self.spool = tmp / "spool"
        self.lines: list[str] = []
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AUDIT_MANAGER__") and k not in ("CONFIG_PATH", "DATABASE_URL")
        }
        full_env.update(
            {
                "AUDIT_MANAGER__HTTP__LISTEN": "127.0.0.1:0",
                "AUDIT_MANAGER__SPOOL__PATH": str(self.spool),
                "AUDIT_MANAGER__ROLES": roles,
                "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS": "embedded",
                "AUDIT_MANAGER__KAFKA__CONSUMER__SESSION_TIMEOUT_MS": "6000",
                "AUDIT_MANAGER__KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS": "500",
                "AUDIT_MANAGER__SINK__FLUSH_INTERVAL": "50ms",
                "RUST_LOG": "warn,audit_manager::serve=info",
                "LOG_FORMAT": "json",
            }
        )
        if db is not None:
            full_env["AUDIT_MANAGER__DATABASE__URL"] = db.url
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [audit_bin(), "serve"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._addr: list[str] = []
        self.scheme = "http"
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(LISTEN_DEADLINE) or not self._addr:
            self.kill()
            raise RuntimeError(
                "audit-manager did not report its address:\n" + "\n".join(self.lines[-50:])
            )
        self.addr = self._addr[0]
        self.url = f"{self.scheme}://{self.addr}"

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "audit-manager listening" and not self._addr:
                self._addr.append(v["addr"])
                self.scheme = v.get("scheme", "http")
                self._ready.set()
        self._ready.set()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen; connections hang, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture
def db() -> Iterator[PgDb]:
    d = PgDb()
    try:
        yield d
    finally:
        d.drop()


@pytest.fixture
def server(tmp_path: Path, db: PgDb) -> Iterator[AuditServer]:
    s = AuditServer(tmp_path, db)
    try:
        yield s
    finally:
        s.kill()


def event(i: int | str = 0, **data: Any) -> dict[str, Any]:
    """A valid event without id and time (the SDK fills them)."""
    body: dict[str, Any] = {
        "actor": {"type": "user", "id": "officer-7"},
        "action": "beneficiary.update",
        "outcome": "success",
        "resource": {"type": "beneficiary", "id": f"b-{i}"},
    }
    body.update(data)
    return {
        "specversion": "1.0",
        "source": "/sdk/tests",
        "type": "org.openg2p.beneficiary.updated",
        "subject": f"beneficiary/b-{i}",
        "data": body,
    }
