"""The client against the real binary: ids and times filled once, retries, typed errors,
batch splitting, bearer tokens."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import AuditServer, PgDb, event

from audit_manager_client import (
    AsyncAuditClient,
    AuditClient,
    AuditRejected,
    AuditUnavailable,
    RetryInfo,
)


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests per path that reached the network layer."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def test_emit_fills_id_and_time_and_is_stored(server: AuditServer, db: PgDb) -> None:
    with AuditClient(server.url) as client:
        ev = event(1)
        accepted = client.emit(ev)
    assert "id" not in ev, "the caller's dict is not modified"
    assert len(accepted) == 36 and accepted[14] == "7", "a UUIDv7"
    db.wait_for_ids([accepted])
    rows = db.query(
        "SELECT actor_id, outcome, resource_id FROM audit_events WHERE id = %s", [accepted]
    )
    assert rows == [("officer-7", "success", "b-1")]


def _hold_in_flight_budget(addr: str, nbytes: int) -> socket.socket:
    """Announces a request body of ``nbytes`` and sends only its first byte: the server counts
    the announced bytes against ``http.max_in_flight_bytes`` until the request ends."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(
        (
            "POST /v1/auditmanager/events HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: application/json\r\nContent-Length: {nbytes}\r\n\r\n{{"
        ).encode()
    )
    return s


def test_503_with_retry_after_then_202_is_one_row(tmp_path: Path, db: PgDb) -> None:
    """A real 503 AUD-004 from the real binary, no proxy: the server's in-flight body budget
    (``http.max_in_flight_bytes`` = ``http.max_body_bytes`` = 64 KiB) is held by a request
    that announced a 64 KiB body and sent one byte. The client's first attempt is refused
    503 with ``Retry-After``; the hook then releases the budget, and the retry (after at least
    ``Retry-After``) gets 202. Exactly one row results."""
    limit = 64 * 1024
    server = AuditServer(
        tmp_path,
        db,
        env={
            "AUDIT_MANAGER__HTTP__MAX_BODY_BYTES": str(limit),
            "AUDIT_MANAGER__HTTP__MAX_IN_FLIGHT_BYTES": str(limit),
            "AUDIT_MANAGER__SPOOL__RETRY_AFTER": "1s",
        },
    )
    try:
        blocker = _hold_in_flight_budget(server.addr, limit)
        retries: list[RetryInfo] = []
        released_at: list[float] = []

        def on_retry(info: RetryInfo) -> None:
            retries.append(info)
            if not released_at:
                blocker.close()
                released_at.append(time.monotonic())

        # Give the server a moment to read the blocker's headers: poll until a probe is refused.
        probe = AuditClient(server.url, deadline=0.5, backoff_base=0.05)
        deadline = time.monotonic() + 10
        while True:
            try:
                with pytest.raises(AuditUnavailable):
                    probe.emit(event("probe"))
                break
            except pytest.fail.Exception:
                # The probe got in before the blocker was counted; it is a stored event, fine.
                assert time.monotonic() < deadline, "the in-flight budget was never held"
        probe.close()

        transport = CountingTransport()
        with AuditClient(server.url, on_retry=on_retry, transport=transport) as client:
            ev = event(503)
            t0 = time.monotonic()
            accepted = client.emit(ev)
            elapsed = time.monotonic() - t0
        assert retries, "the first attempt was refused"
        first = retries[0]
        assert first.status == 503 and first.code == "AUD-004", first
        assert first.retry_after is not None and first.retry_after >= 1.0, first
        assert elapsed >= first.retry_after, "Retry-After was honoured"
        assert transport.paths.count("/v1/auditmanager/events") == len(retries) + 1
        db.wait_for_ids([accepted])
        # Let the pipeline settle, then count: one row, not one per attempt.
        time.sleep(1.0)
        assert db.query("SELECT count(*) FROM audit_events WHERE id = %s", [accepted]) == [(1,)]
    finally:
        server.kill()


def test_422_raises_typed_error_and_is_not_retried(server: AuditServer) -> None:
    """An actor type the service does not know passes the local checks and is refused by the
    service with 422 AUD-002: raised at once, one request, no retry."""
    retries: list[RetryInfo] = []
    transport = CountingTransport()
    bad = event(422)
    bad["data"]["actor"]["type"] = "robot"
    client = AuditClient(server.url, on_retry=retries.append, transport=transport)
    with client, pytest.raises(AuditRejected) as err:
        client.emit(bad)
    assert err.value.code == "AUD-002"
    assert err.value.status == 422
    assert "actor.type" in err.value.message
    assert retries == []
    assert transport.paths == ["/v1/auditmanager/events"]


def test_unreachable_service_retries_until_the_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    retries: list[RetryInfo] = []
    with AuditClient(
        f"http://127.0.0.1:{port}", deadline=1.0, backoff_base=0.05, on_retry=retries.append
    ) as client:
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable) as err:
            client.emit(event())
        assert time.monotonic() - t0 < 2.0
    assert err.value.attempts >= 3 and err.value.last_status is None
    assert all(r.error and "Connect" in r.error for r in retries)


def test_batches_split_to_the_limits(server: AuditServer, db: PgDb) -> None:
    """1 200 small events go as 500 + 500 + 200; 300 events of ~20 KiB (6 MiB) as two bodies
    under 4 MiB. All are stored, ids in order."""
    transport = CountingTransport()
    with AuditClient(server.url, transport=transport) as client:
        small = client.emit_batch([event(i) for i in range(1200)])
        assert transport.paths == ["/v1/auditmanager/events/batch"] * 3
        big = client.emit_batch([event(i, context={"blob": "x" * 20_000}) for i in range(300)])
        assert len(transport.paths) == 5
    assert len(small) == 1200 and len(big) == 300
    assert small == sorted(small), "UUIDv7 ids made by one process increase"
    db.wait_for_ids(small + big, deadline=90)


def test_batch_limit_smaller_than_the_default_is_learned(tmp_path: Path, db: PgDb) -> None:
    """A service configured with ``ingest.max_batch_size: 100`` answers 400 AUD-007 to a batch
    of 500; the client halves until it fits and delivers everything."""
    server = AuditServer(tmp_path, db, env={"AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE": "100"})
    try:
        with AuditClient(server.url) as client:
            ids = client.emit_batch([event(i) for i in range(450)])
        assert len(ids) == 450
        db.wait_for_ids(ids)
    finally:
        server.kill()


def test_async_client(server: AuditServer, db: PgDb) -> None:
    async def main() -> list[str]:
        async with AsyncAuditClient(server.url) as client:
            one = await client.emit(event("async"))
            many = await client.emit_batch([event(i) for i in range(10)])
            bad = event("bad")
            bad["data"]["actor"]["type"] = "robot"
            with pytest.raises(AuditRejected) as err:
                await client.emit(bad)
            assert err.value.code == "AUD-002"
            return [one, *many]

    ids = asyncio.run(main())
    db.wait_for_ids(ids)


def test_bearer_token(tmp_path: Path, db: PgDb) -> None:
    token = "sdk-test-token-0123456789abcdef"
    principals = tmp_path / "principals.yaml"
    principals.write_text(
        "principals:\n"
        "  - name: sdk-emitter\n"
        "    role: emitter\n"
        f'    token_sha256: "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        '    sources: ["/sdk/*"]\n'
    )
    server = AuditServer(
        tmp_path,
        db,
        env={
            "AUDIT_MANAGER__AUTH__MODE": "token",
            "AUDIT_MANAGER__AUTH__TOKENS_FILE": str(principals),
        },
    )
    try:
        with AuditClient(server.url, token=token) as client:
            accepted = client.emit(event("token"))
            other = event("elsewhere")
            other["source"] = "/payments"
            with pytest.raises(AuditRejected) as forbidden:
                client.emit(other)
        assert forbidden.value.code == "AUD-011" and forbidden.value.status == 403
        with AuditClient(server.url, token="wrong") as client, pytest.raises(AuditRejected) as e:
            client.emit(event("wrong"))
        assert e.value.code == "AUD-010" and e.value.status == 401
        db.wait_for_ids([accepted])
        assert db.query(
            "SELECT auth_type, auth_id FROM audit_events WHERE id = %s", [accepted]
        ) == [("api_key", "sdk-emitter")]
    finally:
        server.kill()


def test_deadline_bounds_a_hanging_service(server: AuditServer) -> None:
    """A frozen service (SIGSTOP): every attempt times out; the call ends by its deadline."""
    server.pause()
    try:
        with AuditClient(server.url, timeout=0.3, deadline=1.5) as client:
            t0 = time.monotonic()
            with pytest.raises(AuditUnavailable) as err:
                client.emit(event())
            assert time.monotonic() - t0 < 2.5
        assert "Timeout" in str(err.value)
    finally:
        server.resume()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_client_certificate(tmp_path: Path, db: PgDb) -> None:
    """``auth.mode: mtls``: the client presents a certificate (``client_cert``) and checks the
    server's against the test CA (``verify``); the row records the principal."""
    d = tmp_path / "pki"
    d.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
             "-subj", "/CN=sdk test CA", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "subjectAltName=DNS:sdk.emitter.test\nextendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)  # fmt: skip
    principals = tmp_path / "principals.yaml"
    principals.write_text(
        "principals:\n"
        "  - name: sdk-mtls\n"
        "    role: emitter\n"
        "    dns_san: sdk.emitter.test\n"
        '    sources: ["/sdk/*"]\n'
    )
    server = AuditServer(
        tmp_path,
        db,
        env={
            "AUDIT_MANAGER__AUTH__MODE": "mtls",
            "AUDIT_MANAGER__AUTH__TOKENS_FILE": str(principals),
            "AUDIT_MANAGER__HTTP__TLS__CERT_FILE": str(d / "server.crt"),
            "AUDIT_MANAGER__HTTP__TLS__KEY_FILE": str(d / "server.key"),
            "AUDIT_MANAGER__HTTP__TLS__CLIENT_CA_FILE": str(d / "ca.crt"),
        },
    )
    try:
        assert server.url.startswith("https://")
        ca = str(d / "ca.crt")
        cert = (str(d / "client.crt"), str(d / "client.key"))
        with AuditClient(server.url, client_cert=cert, verify=ca) as client:
            accepted = client.emit(event("mtls"))
        with AuditClient(server.url, verify=ca) as anonymous, pytest.raises(AuditRejected) as e:
            anonymous.emit(event("no-cert"))
        assert e.value.code == "AUD-010"
        db.wait_for_ids([accepted])
        assert db.query(
            "SELECT auth_type, auth_id FROM audit_events WHERE id = %s", [accepted]
        ) == [("service_account", "sdk-mtls")]
    finally:
        server.kill()
