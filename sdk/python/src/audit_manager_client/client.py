"""HTTP clients for audit-manager's ingest API (``POST /v1/auditmanager/events[/batch]``).

Both clients fill ``id`` (UUIDv7) and ``time`` before the first attempt, retry what may
succeed later (connection errors, timeouts, 408 AUD-408, 5xx such as 503 AUD-004 with
``Retry-After``) with exponential backoff and full jitter until a deadline, and never retry another
4xx: that raises :class:`AuditRejected` with the service's ``AUD-…`` code.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from ._version import __version__
from .errors import AuditRejected, AuditUnavailable, ErrorDetail
from .events import Event, InvalidEvent, prepare

BASE_PATH = "/v1/auditmanager"
MAX_BATCH_EVENTS = 500
"""The service's default ``ingest.max_batch_size``."""
MAX_BODY_BYTES = 4 * 1024 * 1024
"""The service's default ``http.max_body_bytes``."""

_ACCEPTED = (200, 201, 202)


@dataclass(frozen=True)
class RetryInfo:
    """What an ``on_retry`` hook is told before the client waits and tries again."""

    attempt: int
    """The attempt that just failed (1 for the first)."""
    delay: float
    """Seconds the client waits before the next attempt."""
    status: int | None
    """HTTP status of the failed attempt; ``None`` when it got no answer."""
    code: str | None
    """``AUD-…`` code of the failed attempt's answer, when it had one."""
    retry_after: float | None
    """The answer's ``Retry-After`` in seconds, when it had one."""
    error: str | None
    """The transport error (connection refused, timeout, ...), when there was no answer."""


RetryHook = Callable[[RetryInfo], None]


def encode(event: Event) -> bytes:
    """The compact JSON body of one prepared event."""
    try:
        return json.dumps(
            event, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as e:
        raise InvalidEvent(f"event is not JSON-serialisable: {e}") from e


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _envelope(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _errors(envelope: Mapping[str, Any]) -> list[ErrorDetail]:
    out = []
    for e in envelope.get("errors") or []:
        if isinstance(e, Mapping):
            code = e.get("errorCode") or e.get("code") or ""
            out.append(ErrorDetail(str(code), str(e.get("message", ""))))
    return out


@dataclass
class _Outcome:
    """How one attempt ended: accepted (``envelope``), or retryable (the rest)."""

    envelope: dict[str, Any] | None = None
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    error: str | None = None


def _classify(response: httpx.Response) -> _Outcome:
    envelope = _envelope(response)
    if response.status_code in _ACCEPTED:
        return _Outcome(envelope=envelope)
    errors = _errors(envelope)
    # 408 (AUD-408): the body did not reach the service in time, so nothing was stored; like a
    # broken connection, it is worth another attempt. Every other 4xx is final.
    if 400 <= response.status_code < 500 and response.status_code != 408:
        raise AuditRejected(response.status_code, errors)
    return _Outcome(
        status=response.status_code,
        code=errors[0].code if errors else None,
        retry_after=_retry_after(response.headers),
    )


def _chunks(encoded: Sequence[bytes], max_events: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges of ``encoded`` that fit one batch request."""
    overhead = len(b'{"events":[]}')
    start = 0
    while start < len(encoded):
        end, size = start, overhead
        while end < len(encoded) and end - start < max_events:
            add = len(encoded[end]) + (1 if end > start else 0)
            if end > start and size + add > max_bytes:
                break
            size += add
            end += 1
        yield start, end
        start = end


def _batch_body(parts: Sequence[bytes]) -> bytes:
    return b'{"events":[' + b",".join(parts) + b"]}"


def _ssl_context(
    verify: bool | str | ssl.SSLContext,
    client_cert: str | tuple[str, str] | None,
) -> bool | ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        if client_cert is not None:
            raise ValueError("pass client_cert only without a ready SSLContext in verify")
        return verify
    if client_cert is None and not isinstance(verify, str):
        return verify
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        ctx = ssl.create_default_context(cafile=verify)
    else:
        ctx = ssl.create_default_context()
    if client_cert is not None:
        if isinstance(client_cert, str):
            ctx.load_cert_chain(client_cert)
        else:
            ctx.load_cert_chain(client_cert[0], client_cert[1])
    return ctx


class _Settings:
    """What both clients share: URLs, headers, limits and the retry schedule."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        deadline: float,
        backoff_base: float,
        backoff_max: float,
        max_batch_events: int,
        max_batch_bytes: int,
        on_retry: RetryHook | None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.endswith(BASE_PATH):
            base += BASE_PATH
        self.events_url = base + "/events"
        self.batch_url = base + "/events/batch"
        self.headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": f"audit-manager-client-python/{__version__}",
        }
        if token is not None:
            self.headers["authorization"] = f"Bearer {token}"
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        self.timeout = timeout
        self.deadline = deadline
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        if max_batch_events < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch_events and max_batch_bytes must be at least 1")
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.on_retry = on_retry

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; never shorter than the answer's ``Retry-After``."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        jittered = random.uniform(0, cap)
        if retry_after is not None:
            # Honour the service's hint, with a little spread so emitters do not return
            # in lockstep.
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after + 0.05))
        return jittered

    def give_up(self, attempt: int, outcome: _Outcome, deadline_at: float) -> AuditUnavailable:
        what = (
            f"HTTP {outcome.status} {outcome.code or ''}".strip()
            if outcome.status is not None
            else (outcome.error or "no answer")
        )
        return AuditUnavailable(
            f"audit-manager did not accept the request within {self.deadline:.1f}s "
            f"({attempt} attempts; last: {what})",
            attempts=attempt,
            last_status=outcome.status,
            last_code=outcome.code,
        )

    def next_wait(self, attempt: int, outcome: _Outcome, deadline_at: float) -> float:
        """Seconds to wait before the next attempt; raises when that passes the deadline."""
        wait = self.delay(attempt, outcome.retry_after)
        if time.monotonic() + wait >= deadline_at:
            raise self.give_up(attempt, outcome, deadline_at)
        if self.on_retry is not None:
            self.on_retry(
                RetryInfo(
                    attempt, wait, outcome.status, outcome.code, outcome.retry_after, outcome.error
                )
            )
        return wait

    def request_timeout(self, deadline_at: float) -> float:
        return max(0.001, min(self.timeout, deadline_at - time.monotonic()))


def _accepted_one(envelope: Mapping[str, Any], sent_id: str) -> str:
    resp = envelope.get("response")
    if isinstance(resp, Mapping) and isinstance(resp.get("accepted"), str):
        return str(resp["accepted"])
    return sent_id


def _accepted_many(envelope: Mapping[str, Any], sent: Sequence[str]) -> list[str]:
    resp = envelope.get("response")
    if isinstance(resp, Mapping):
        acc = resp.get("accepted")
        if isinstance(acc, list) and len(acc) == len(sent):
            return [str(a) for a in acc]
    return list(sent)


def _shrinkable(err: AuditRejected, n: int) -> bool:
    """A batch refused for its size (AUD-007 count, AUD-003 bytes) is retried in halves."""
    return n > 1 and err.code in ("AUD-007", "AUD-003")


class AuditClient:
    """A synchronous client. Thread-safe; keep one per process and reuse it.

    ``token`` sends ``Authorization: Bearer``; ``client_cert`` (a PEM file with the key, or
    ``(cert_file, key_file)``) presents a client certificate (``auth.mode: mtls``) and
    ``verify`` (``True``, ``False``, a CA bundle path or an ``SSLContext``) checks the
    server's. ``timeout`` bounds one attempt, ``deadline`` all attempts of one call.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        *,
        deadline: float = 30.0,
        client_cert: str | tuple[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BODY_BYTES,
        on_retry: RetryHook | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._s = _Settings(
            base_url,
            token,
            timeout,
            deadline,
            backoff_base,
            backoff_max,
            max_batch_events,
            max_batch_bytes,
            on_retry,
        )
        self._http = httpx.Client(
            timeout=timeout,
            verify=_ssl_context(verify, client_cert),
            transport=transport,
            headers=self._s.headers,
        )

    @property
    def deadline(self) -> float:
        return self._s.deadline

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, url: str, body: bytes, deadline: float | None = None) -> dict[str, Any]:
        deadline_at = time.monotonic() + (deadline if deadline is not None else self._s.deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self._http.post(url, content=body, timeout=self._s.request_timeout(deadline_at))
            except httpx.TransportError as e:
                outcome = _Outcome(error=f"{type(e).__name__}: {e}")
            else:
                outcome = _classify(r)
                if outcome.envelope is not None:
                    return outcome.envelope
            time.sleep(self._s.next_wait(attempt, outcome, deadline_at))

    def emit(self, event: Mapping[str, Any], *, deadline: float | None = None) -> str:
        """Sends one event; returns the id the service accepted (after its fsync).

        Raises :class:`AuditRejected` (4xx, not retried), :class:`AuditUnavailable` (not
        accepted before the deadline) or :class:`InvalidEvent` (refused locally).
        """
        ev = prepare(event)
        return self.send_prepared(ev["id"], encode(ev), deadline=deadline)

    def send_prepared(self, event_id: str, body: bytes, *, deadline: float | None = None) -> str:
        """Sends one event already prepared and encoded (used by the outbox)."""
        return _accepted_one(self._post(self._s.events_url, body, deadline), event_id)

    def emit_batch(
        self, events: Sequence[Mapping[str, Any]], *, deadline: float | None = None
    ) -> list[str]:
        """Sends events in as few requests as the service's limits allow; returns the ids in
        order. One request is all or nothing; a list that needs several is not atomic as a
        whole: an error then carries in ``accepted`` the ids stored before it."""
        prepared = [prepare(e) for e in events]
        return self.send_prepared_batch(
            [e["id"] for e in prepared], [encode(e) for e in prepared], deadline=deadline
        )

    def send_prepared_batch(
        self,
        ids: Sequence[str],
        encoded: Sequence[bytes],
        *,
        deadline: float | None = None,
    ) -> list[str]:
        """Sends prepared, encoded events (``ids`` their ids) in batches within the limits
        (used by the outbox)."""
        out: list[str] = []
        pending: list[tuple[int, int]] = list(
            _chunks(encoded, self._s.max_batch_events, self._s.max_batch_bytes)
        )
        while pending:
            start, end = pending.pop(0)
            try:
                env = self._post(self._s.batch_url, _batch_body(encoded[start:end]), deadline)
            except AuditRejected as e:
                if _shrinkable(e, end - start):
                    mid = (start + end) // 2
                    pending[:0] = [(start, mid), (mid, end)]
                    self._s.max_batch_events = max(1, min(self._s.max_batch_events, mid - start))
                    continue
                raise AuditRejected(e.status, e.errors, accepted=out) from None
            except AuditUnavailable as e:
                e.accepted = tuple(out)
                raise
            out.extend(_accepted_many(env, ids[start:end]))
        return out


class AsyncAuditClient:
    """The asyncio twin of :class:`AuditClient` (same arguments, ``await`` the methods)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        *,
        deadline: float = 30.0,
        client_cert: str | tuple[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BODY_BYTES,
        on_retry: RetryHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._s = _Settings(
            base_url,
            token,
            timeout,
            deadline,
            backoff_base,
            backoff_max,
            max_batch_events,
            max_batch_bytes,
            on_retry,
        )
        self._http = httpx.AsyncClient(
            timeout=timeout,
            verify=_ssl_context(verify, client_cert),
            transport=transport,
            headers=self._s.headers,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _post(self, url: str, body: bytes, deadline: float | None = None) -> dict[str, Any]:
        deadline_at = time.monotonic() + (deadline if deadline is not None else self._s.deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                r = await self._http.post(
                    url, content=body, timeout=self._s.request_timeout(deadline_at)
                )
            except httpx.TransportError as e:
                outcome = _Outcome(error=f"{type(e).__name__}: {e}")
            else:
                outcome = _classify(r)
                if outcome.envelope is not None:
                    return outcome.envelope
            await asyncio.sleep(self._s.next_wait(attempt, outcome, deadline_at))

    async def emit(self, event: Mapping[str, Any], *, deadline: float | None = None) -> str:
        """See :meth:`AuditClient.emit`."""
        ev = prepare(event)
        env = await self._post(self._s.events_url, encode(ev), deadline)
        return _accepted_one(env, ev["id"])

    async def emit_batch(
        self, events: Sequence[Mapping[str, Any]], *, deadline: float | None = None
    ) -> list[str]:
        """See :meth:`AuditClient.emit_batch`."""
        prepared = [prepare(e) for e in events]
        encoded = [encode(e) for e in prepared]
        ids = [e["id"] for e in prepared]
        out: list[str] = []
        pending = list(_chunks(encoded, self._s.max_batch_events, self._s.max_batch_bytes))
        while pending:
            start, end = pending.pop(0)
            try:
                env = await self._post(self._s.batch_url, _batch_body(encoded[start:end]), deadline)
            except AuditRejected as e:
                if _shrinkable(e, end - start):
                    mid = (start + end) // 2
                    pending[:0] = [(start, mid), (mid, end)]
                    self._s.max_batch_events = max(1, min(self._s.max_batch_events, mid - start))
                    continue
                raise AuditRejected(e.status, e.errors, accepted=out) from None
            except AuditUnavailable as e:
                e.accepted = tuple(out)
                raise
            out.extend(_accepted_many(env, ids[start:end]))
        return out
