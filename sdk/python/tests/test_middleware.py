"""ASGI middleware: a FastAPI app's requests become rows with the right actor and outcome.
Also runs the README's two examples (``examples/``) against the real binary."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import AuditServer, PgDb, wait_until
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from audit_manager_client import AsyncAuditClient, AuditClient, AuditMiddleware, AuditRoute, Outbox

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _rows(db: PgDb) -> dict[str, tuple[Any, ...]]:
    rows = db.query(
        "SELECT action, actor_type, actor_id, outcome, resource_type, resource_id, reason "
        "FROM audit_events WHERE source = '/sdk/app'"
    )
    return {f"{r[0]} {r[5]}": r for r in rows}


def _app(sink: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def read(item_id: str, request: Request) -> dict[str, str]:
        user = request.headers.get("x-user")
        if user is None:
            raise HTTPException(401)
        request.state.audit_actor = {"type": "user", "id": user, "name": user.title()}
        if user == "guest":
            raise HTTPException(403)
        if item_id == "missing":
            raise HTTPException(404)
        return {"id": item_id}

    @app.post("/items/{item_id}/crash")
    def crash(item_id: str) -> None:
        raise RuntimeError("boom")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    app.add_middleware(
        AuditMiddleware,
        sink=sink,
        source="/sdk/app",
        routes=[
            AuditRoute(
                "/items/{item_id}", methods=["GET"], action="item.read", resource_type="item"
            ),
            AuditRoute("/items/{item_id}/crash", action="item.crash", resource_type="item"),
        ],
    )
    return app


EXPECTED = {
    # key: (actor_type, actor_id, outcome, reason)
    "item.read i-1": ("user", "alice", "success", None),
    "item.read i-2": ("user", "guest", "denied", "HTTP 403"),
    "item.read i-3": ("anonymous", "anonymous", "denied", "HTTP 401"),
    "item.read missing": ("user", "bob", "failure", "HTTP 404"),
    "item.crash i-4": ("anonymous", "anonymous", "failure", "HTTP 500"),
}


def _requests(http: TestClient) -> None:
    assert http.get("/items/i-1", headers={"x-user": "alice"}).status_code == 200
    assert http.get("/items/i-2", headers={"x-user": "guest"}).status_code == 403
    assert http.get("/items/i-3").status_code == 401
    assert http.get("/items/missing", headers={"x-user": "bob"}).status_code == 404
    assert http.post("/items/i-4/crash").status_code == 500
    assert http.get("/health").status_code == 200  # not a matched route


def _check(db: PgDb) -> None:
    wait_until("5 request events stored", lambda: len(_rows(db)) == len(EXPECTED), 60)
    rows = _rows(db)
    for key, (atype, aid, outcome, reason) in EXPECTED.items():
        action, resource_id = key.split(" ")
        assert rows[key] == (action, atype, aid, outcome, "item", resource_id, reason), key


def test_middleware_through_the_outbox(tmp_path: Path, server: AuditServer, db: PgDb) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", AuditClient(server.url))
    with TestClient(_app(outbox), raise_server_exceptions=False) as http:
        _requests(http)
    # Written when each response started: all five are in the outbox before any sending.
    assert outbox.stats().depth == 5
    assert outbox.run_until_empty(timeout=30) == 5
    _check(db)


def test_middleware_through_the_async_client(server: AuditServer, db: PgDb) -> None:
    client = AsyncAuditClient(server.url)
    app = _app(client)
    with TestClient(app, raise_server_exceptions=False) as http:
        _requests(http)
        middleware = app.middleware_stack
        while middleware is not None and not isinstance(middleware, AuditMiddleware):
            middleware = getattr(middleware, "app", None)
        assert middleware is not None
        http.portal.call(middleware.drain)
        http.portal.call(client.aclose)
    _check(db)


def test_fastapi_example(tmp_path: Path, server: AuditServer, db: PgDb) -> None:
    """examples/fastapi_app.py as the README shows it."""
    os.environ["AUDIT_MANAGER_URL"] = server.url
    os.environ["AUDIT_OUTBOX"] = str(tmp_path / "example.sqlite3")
    try:
        spec = importlib.util.spec_from_file_location(
            "fastapi_example", EXAMPLES / "fastapi_app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del os.environ["AUDIT_MANAGER_URL"], os.environ["AUDIT_OUTBOX"]
    with TestClient(module.app) as http:
        assert http.get("/beneficiaries/b-1", headers={"x-user": "officer-9"}).status_code == 200
        assert (
            http.put(
                "/beneficiaries/b-1", json={"phone": "2"}, headers={"x-user": "officer-9"}
            ).status_code
            == 403
        )
        assert (
            http.put(
                "/beneficiaries/b-1", json={"phone": "2"}, headers={"x-user": "officer-7"}
            ).status_code
            == 200
        )
        assert http.get("/health").status_code == 200
        wait_until("the example's outbox drained", lambda: module.outbox.stats().depth == 0, 30)

    def rows() -> list[tuple[Any, ...]]:
        return db.query(
            "SELECT action, actor_id, outcome FROM audit_events WHERE source = '/registry' "
            "ORDER BY occurred_at"
        )

    wait_until("3 rows from the example", lambda: len(rows()) == 3, 60)
    assert rows() == [
        ("beneficiary.read", "officer-9", "success"),
        ("beneficiary.update", "officer-9", "denied"),
        ("beneficiary.update", "officer-7", "success"),
    ]


def test_plain_script_example(tmp_path: Path, server: AuditServer, db: PgDb) -> None:
    """examples/plain_script.py as the README shows it."""
    env = dict(os.environ, AUDIT_MANAGER_URL=server.url, AUDIT_OUTBOX=str(tmp_path / "s.sqlite3"))
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_script.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "delivered 3" in out, out
    ids = [w for line in out.splitlines() for w in line.split()[1:] if len(w) == 36]
    assert len(ids) == 4
    db.wait_for_ids(ids)
