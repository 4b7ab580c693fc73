"""ASGI middleware (Starlette, FastAPI, any ASGI app): one audit event per matched request.

Through an :class:`Outbox`, the event is written locally when the response starts (the
response waits only for that local write, and a crash after the client saw the answer
cannot lose the event). Through a client, it is sent in the background after the response
(best effort: a crash may lose it; use an outbox for the guarantee). Either way the audit
service's latency and outages never reach the response.

The outcome comes from the status: 2xx ``success``, 401/403 ``denied``, anything else
``failure`` (an exception in the app is a 500, ``failure``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from .client import AsyncAuditClient, AuditClient
from .events import Event
from .outbox import Outbox

log = logging.getLogger("audit_manager_client.middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ActorResolver = Callable[[Scope], "Mapping[str, Any] | None"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


@dataclass(frozen=True)
class AuditRoute:
    """Which requests are audited, and how they are described.

    ``path`` uses Starlette's syntax: ``{name}`` matches one segment, ``{name:path}`` the
    rest. ``methods`` (``None``: any) limits the methods. ``action`` defaults to
    ``"<METHOD> <path>"``; ``resource_type`` with the value of ``resource_id`` (a path
    parameter's name, default the first one) becomes ``data.resource``; ``type`` overrides the
    middleware's CloudEvents ``type``.
    """

    path: str
    methods: Collection[str] | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    type: str | None = None

    def compile(self) -> tuple[re.Pattern[str], list[str]]:
        names: list[str] = []
        out, pos = "", 0
        for m in _PARAM.finditer(self.path):
            out += re.escape(self.path[pos : m.start()])
            names.append(m.group(1))
            out += f"(?P<{m.group(1)}>.+)" if m.group(2) == "path" else f"(?P<{m.group(1)}>[^/]+)"
            pos = m.end()
        out += re.escape(self.path[pos:])
        return re.compile(f"^{out}/?$"), names


def outcome_for(status: int) -> str:
    """2xx ``success``; 401 and 403 ``denied``; anything else ``failure``."""
    if 200 <= status < 300:
        return "success"
    if status in (401, 403):
        return "denied"
    return "failure"


def default_actor(scope: Scope) -> Mapping[str, Any] | None:
    """``request.state.audit_actor`` if the app set one (a dict with at least ``id``), else
    an authenticated Starlette ``request.user``, else ``None`` (anonymous)."""
    state = scope.get("state")
    if isinstance(state, Mapping):
        actor = state.get("audit_actor")
        if isinstance(actor, Mapping):
            return actor
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        ident = getattr(user, "identity", None) or getattr(user, "display_name", None)
        if ident:
            return {"type": "user", "id": str(ident)}
    return None


class AuditMiddleware:
    """Records matched requests as audit events.

    ``sink``: an :class:`Outbox` (durable; the recommended choice), an
    :class:`AsyncAuditClient` or an :class:`AuditClient` (background, best effort).
    ``source`` is the events' CloudEvents ``source``; ``routes`` the :class:`AuditRoute`
    list (strings are paths with any method; ``None`` audits every HTTP request).
    ``actor(scope)`` returns ``data.actor`` (default :func:`default_actor`; without one the
    actor is ``anonymous``). ``enrich(scope, event)`` may change the event before it is
    stored. ``on_emit_error(exc, event)`` decides what an outbox write failure (e.g.
    ``OutboxFull``) does: without it the error propagates and the request fails, so no
    request is ever answered while its audit event was silently dropped.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        sink: Outbox | AuditClient | AsyncAuditClient,
        source: str,
        routes: Sequence[AuditRoute | str] | None = None,
        event_type: str = "org.openg2p.http.request",
        actor: ActorResolver | None = None,
        enrich: Callable[[Scope, Event], None] | None = None,
        on_emit_error: Callable[[Exception, Event], None] | None = None,
    ) -> None:
        self.app = app
        self.sink = sink
        self.source = source
        self.event_type = event_type
        self.actor = actor or default_actor
        self.enrich = enrich
        self.on_emit_error = on_emit_error
        self.routes: list[tuple[AuditRoute, re.Pattern[str], list[str]]] | None = None
        if routes is not None:
            self.routes = []
            for r in routes:
                route = AuditRoute(r) if isinstance(r, str) else r
                pattern, names = route.compile()
                self.routes.append((route, pattern, names))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: ThreadPoolExecutor | None = None

    def _match(self, scope: Scope) -> tuple[AuditRoute, dict[str, str]] | None:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if self.routes is None:
            return AuditRoute(path), {}
        for route, pattern, _names in self.routes:
            if route.methods is not None and method not in {m.upper() for m in route.methods}:
                continue
            m = pattern.match(path)
            if m:
                return route, m.groupdict()
        return None

    def build_event(
        self, scope: Scope, route: AuditRoute, params: Mapping[str, str], status: int
    ) -> Event:
        """The event for one finished request (override to change the shape)."""
        method = scope.get("method", "GET")
        actor = dict(self.actor(scope) or {"type": "anonymous", "id": "anonymous"})
        client = scope.get("client")
        if client and "ip" not in actor:
            actor["ip"] = client[0]
        outcome = outcome_for(status)
        data: dict[str, Any] = {
            "actor": actor,
            "action": route.action or f"{method} {route.path}",
            "outcome": outcome,
            "context": {"http": {"method": method, "path": scope.get("path"), "status": status}},
        }
        if outcome != "success":
            data["reason"] = f"HTTP {status}"
        event: Event = {
            "specversion": "1.0",
            "source": self.source,
            "type": route.type or self.event_type,
        }
        if route.resource_type is not None:
            res: dict[str, Any] = {"type": route.resource_type}
            key = route.resource_id or next(iter(params), None)
            if key is not None and key in params:
                res["id"] = params[key]
            data["resource"] = res
            event["subject"] = f"{res['type']}/{res['id']}" if "id" in res else res["type"]
        for name, value in scope.get("headers") or []:
            if name == b"traceparent":
                event["traceparent"] = value.decode("latin-1")
        event["data"] = data
        if self.enrich is not None:
            self.enrich(scope, event)
        return event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, params = matched
        status: list[int] = []

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and not status:
                status.append(int(message["status"]))
                if isinstance(self.sink, Outbox):
                    await self._to_outbox(self.build_event(scope, route, params, status[0]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not status:
                status.append(500)
                if isinstance(self.sink, Outbox):
                    await self._to_outbox(self.build_event(scope, route, params, 500))
                else:
                    self._in_background(self.build_event(scope, route, params, 500))
            raise
        if not isinstance(self.sink, Outbox) and status:
            self._in_background(self.build_event(scope, route, params, status[0]))

    async def _to_outbox(self, event: Event) -> None:
        assert isinstance(self.sink, Outbox)
        try:
            await anyio.to_thread.run_sync(self.sink.emit, event)
        except Exception as e:
            if self.on_emit_error is None:
                raise
            self.on_emit_error(e, event)

    def _in_background(self, event: Event) -> None:
        sink = self.sink
        if isinstance(sink, AsyncAuditClient):
            task = asyncio.get_running_loop().create_task(self._send_async(sink, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(sink, AuditClient):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="audit-emit")
            self._pool.submit(self._send_sync, sink, event)

    async def _send_async(self, client: AsyncAuditClient, event: Event) -> None:
        try:
            await client.emit(event)
        except Exception as e:
            self._report(e, event)

    def _send_sync(self, client: AuditClient, event: Event) -> None:
        try:
            client.emit(event)
        except Exception as e:
            self._report(e, event)

    def _report(self, e: Exception, event: Event) -> None:
        if self.on_emit_error is not None:
            self.on_emit_error(e, event)
        else:
            log.error("audit event for %s not delivered: %s", event["data"].get("action"), e)

    async def drain(self) -> None:
        """Waits for the events being sent in the background (client sinks); call it at
        shutdown, e.g. in the app's lifespan."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await anyio.to_thread.run_sync(pool.shutdown)
