"""A plain script: send events directly, and through a durable outbox.

AUDIT_MANAGER_URL=http://localhost:8000 python examples/plain_script.py
"""

from __future__ import annotations

import os
import sys

from audit_manager_client import (
    AuditClient,
    AuditRejected,
    AuditUnavailable,
    Outbox,
    actor,
    changes,
    make_event,
    resource,
)

url = os.environ.get("AUDIT_MANAGER_URL", "http://localhost:8000")

with AuditClient(url, token=os.environ.get("AUDIT_MANAGER_TOKEN")) as client:
    event = make_event(
        source="/registry/beneficiaries",
        type="org.openg2p.beneficiary.updated",
        subject="beneficiary/b-1029",
        actor=actor("officer-7", name="Officer Seven", roles=["officer"]),
        action="beneficiary.update",
        outcome="success",
        resource=resource("beneficiary", "b-1029"),
        changes=changes({"phone": "0700000001"}, {"phone": "0700000002"}),
    )
    # Direct: returns after audit-manager's 202 (its fsync), retrying 503s and timeouts.
    try:
        print("accepted", client.emit(event))
    except AuditRejected as e:  # a 4xx: fix the event; never retried
        sys.exit(f"refused: {e.code} {e.message}")
    except AuditUnavailable as e:  # not accepted before the deadline
        sys.exit(f"audit-manager unavailable: {e}")

    # Durable: returns after the local write; delivered by the outbox's sender.
    outbox = Outbox(os.environ.get("AUDIT_OUTBOX", "audit-outbox.sqlite3"), client)
    ids = [
        outbox.emit(
            make_event(
                source="/registry/auth",
                type="org.openg2p.auth.login",
                actor=actor(f"officer-{n}"),
                action="login",
                outcome="success",
            )
        )
        for n in range(3)
    ]
    print("stored in the outbox", *ids)
    print("delivered", outbox.run_until_empty(timeout=60))
    outbox.close()
