"""audit-manager stopped under emitter load: the emitter's requests keep their latency, the
outbox grows, and it drains to zero when the service returns."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import AuditServer, PgDb, event, wait_until

from audit_manager_client import AuditClient, AuditUnavailable, Outbox

RATE = 100  # emitter requests per second
UP_SECONDS = 3.0
DOWN_SECONDS = 5.0


def _p99(samples: list[float]) -> float:
    s = sorted(samples)
    return s[int(0.99 * (len(s) - 1))]


def _paced_requests(outbox: Outbox, seconds: float, ids: list[str], tag: str) -> list[float]:
    """Emitter "requests" at RATE per second for ``seconds``: each one is the outbox write a
    request handler does; returns their latencies."""
    lat: list[float] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        t = time.perf_counter()
        ids.append(outbox.emit(event(f"{tag}-{n}")))
        lat.append(time.perf_counter() - t)
        n += 1
        next_at = start + n / RATE
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return lat


def test_service_stopped_under_load(tmp_path: Path, server: AuditServer, db: PgDb) -> None:
    """The service is frozen with SIGSTOP (the harsher kind of "stopped": connections hang
    until the client's timeout instead of being refused) for 5 s while the emitter keeps
    emitting 100 requests/s through the outbox. The requests' p99 stays that of the healthy
    phase (give or take the machine's noise) and far below the client's 1 s timeout, which
    is what a synchronous audit call would add; the outbox grows, then drains to zero once
    the service is resumed, and every event is stored once."""
    client = AuditClient(server.url, timeout=1.0, deadline=2.0)
    outbox = Outbox(
        tmp_path / "outbox.sqlite3", client, poll_interval=0.05, retry_base=0.1, retry_max=0.5
    )
    outbox.start()
    ids: list[str] = []
    try:
        up = _paced_requests(outbox, UP_SECONDS, ids, "up")
        wait_until("outbox drained while the service is up", lambda: outbox.stats().depth == 0, 30)

        server.pause()
        try:
            down = _paced_requests(outbox, DOWN_SECONDS, ids, "down")
            depth_during = outbox.stats().depth
            # For contrast: the same event sent synchronously waits out the timeouts.
            t = time.perf_counter()
            with pytest.raises(AuditUnavailable):
                client.emit(event("direct"))
            direct = time.perf_counter() - t
        finally:
            server.resume()

        p99_up, p99_down = _p99(up), _p99(down)
        print(
            f"emit p99 up {p99_up * 1000:.2f} ms, down {p99_down * 1000:.2f} ms "
            f"({len(up)}/{len(down)} requests); outbox depth during the outage {depth_during}; "
            f"a direct call took {direct:.2f} s"
        )
        assert depth_during >= 0.9 * len(down), "the outbox grew during the outage"
        assert direct >= 1.0
        assert p99_down < 0.25, "far below the client's 1 s timeout"
        assert p99_down <= max(3 * p99_up, p99_up + 0.05), "the latency did not change"

        wait_until(
            "outbox drained after the service returned", lambda: outbox.stats().depth == 0, 90
        )
    finally:
        outbox.close()
    db.wait_for_ids(ids, deadline=90)
    stored = Counter(db.audit_ids())
    assert all(stored[i] == 1 for i in ids)
