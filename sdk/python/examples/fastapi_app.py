"""A FastAPI service whose requests become audit events through a durable outbox.

    AUDIT_MANAGER_URL=http://localhost:8000 uvicorn examples.fastapi_app:app --port 8080

Each matched request is written to the SQLite outbox when its response starts (one local
fsync); a background thread delivers the events to audit-manager. Who the actor is comes
from the request (here an ``X-User`` header set by the gateway; use your authentication).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from audit_manager_client import AuditClient, AuditMiddleware, AuditRoute, Outbox

client = AuditClient(os.environ.get("AUDIT_MANAGER_URL", "http://localhost:8000"))
outbox = Outbox(os.environ.get("AUDIT_OUTBOX", "audit-outbox.sqlite3"), client)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    outbox.start()  # the background sender
    yield
    outbox.stop()  # whatever is not delivered stays in the file for the next start


app = FastAPI(lifespan=lifespan)


def actor_from_request(scope: Mapping[str, Any]) -> dict[str, Any] | None:
    headers = dict(scope.get("headers") or [])
    user = headers.get(b"x-user")
    return {"type": "user", "id": user.decode()} if user else None


app.add_middleware(
    AuditMiddleware,
    sink=outbox,
    source="/registry",
    event_type="org.openg2p.registry.request",
    actor=actor_from_request,
    routes=[
        AuditRoute(
            "/beneficiaries/{id}",
            methods=["GET"],
            action="beneficiary.read",
            resource_type="beneficiary",
        ),
        AuditRoute(
            "/beneficiaries/{id}",
            methods=["PUT"],
            action="beneficiary.update",
            resource_type="beneficiary",
        ),
    ],
)

BENEFICIARIES: dict[str, dict[str, str]] = {"b-1": {"phone": "0700000001"}}


@app.get("/beneficiaries/{id}")
def read(id: str, x_user: str | None = Header(default=None)) -> dict[str, str]:
    if x_user is None:
        raise HTTPException(401, "who are you?")
    if id not in BENEFICIARIES:
        raise HTTPException(404, "no such beneficiary")
    return BENEFICIARIES[id]


@app.put("/beneficiaries/{id}")
def update(
    id: str, body: dict[str, str], x_user: str | None = Header(default=None)
) -> dict[str, str]:
    if x_user != "officer-7":
        raise HTTPException(403, "only officer-7 may change beneficiaries")
    BENEFICIARIES.setdefault(id, {}).update(body)
    return BENEFICIARIES[id]


@app.get("/health")
def health() -> dict[str, str]:  # not audited: no route matches
    return {"status": "UP"}
