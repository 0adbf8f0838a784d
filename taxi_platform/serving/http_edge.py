"""The fare service's HTTP edge: what an anonymous client can make the server do before any endpoint runs.

Four guards, installed by ``bento/service.py``:

- **Known routes only** (:class:`KnownRoutes`, :func:`guard_routes`): BentoML's metrics middleware, the
  outermost one, labels its request series with the raw URL path, unknown paths included, so every random path
  was a new Prometheus series (a new file region in the multiprocess directory, more bytes in every scrape).
  The wrapper sits outside all of BentoML's middleware and answers a path the app does not route with 404
  itself, so the series count is fixed by the routes, whatever clients send.
- **Load shedding** (:class:`LoadShedder`): beyond ``max_in_flight`` API requests in progress in a worker,
  a request is answered at once with **503** and ``Retry-After: 1`` and a JSON reason, before any body is parsed
  or any model call, outside all of BentoML's middleware. BentoML's own ``traffic.max_concurrency`` (per
  service, divided between the workers) answered **429 "Too many requests"** there, a status that blames the
  client, without ``Retry-After``; the service no longer sets it. Health, readiness and metrics are never shed.
- **Connection deadlines** (:func:`install_connection_timeouts`): uvicorn closes an idle kept-alive connection
  after ``timeout_keep_alive`` but has no deadline for a request head or body, so a client that connects and
  sends nothing, or trickles a byte a second, held a socket (and its memory) for ever. A connection must
  finish a request head within :data:`HEADER_TIMEOUT` seconds of connecting (or of the head's first byte on a
  kept-alive connection) and the body within :data:`BODY_TIMEOUT` seconds of the head; otherwise it is closed.
- **Bounded JSON** (:func:`loads_bounded`): nesting too deep to parse is a client error (400), never a
  ``RecursionError`` (a 500 with a traceback).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

HEADER_TIMEOUT = 5.0  # seconds to send a request head (request line and headers)
BODY_TIMEOUT = 20.0  # seconds from the end of the head to the end of the body (2.5 MB at 125 kB/s)
KEEP_ALIVE_TIMEOUT = 5  # seconds a kept-alive connection may idle between requests (uvicorn's default)

log = logging.getLogger("taxi_platform.serving.edge")

ASGIApp = Callable[[dict[str, Any], Callable, Callable], Awaitable[None]]


class JSONTooDeep(ValueError):
    """A JSON body nests arrays/objects too deep to parse."""


def loads_bounded(body: bytes | str) -> Any:
    """``json.loads`` that refuses a body nested too deep for the parser's recursion (``[[[[…`` 100,000 deep)
    with :class:`JSONTooDeep`, a ValueError like any other malformed body, instead of a ``RecursionError``.

    Shallower nesting parses and is then refused by validation (a quote is depth 1, a batch depth 3); no walk
    over the parsed value, so a valid 10,000-quote batch pays nothing."""
    try:
        return json.loads(body)
    except RecursionError:
        raise JSONTooDeep(
            'JSON nested too deep: a quote is a flat object, a batch {"quotes": [...]}'
        ) from None


class KnownRoutes:
    """ASGI wrapper: HTTP requests for a path outside ``paths`` get 404 here, before the wrapped app (and its
    metrics middleware) sees them; ``on_unknown`` is called for each (e.g. to count them under one series)."""

    def __init__(
        self, app: ASGIApp, paths: frozenset[str], on_unknown: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.paths = paths
        self.on_unknown = on_unknown

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] not in self.paths:
            if self.on_unknown is not None:
                self.on_unknown()
            body = b'{"error":"not found"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


OVERLOAD_RETRY_AFTER = (
    1  # seconds: a shed request is worth retrying that soon (another worker, the queue drained)
)


class LoadShedder:
    """ASGI wrapper: at most ``max_in_flight`` requests for ``paths`` in progress at once (per worker: per event
    loop); beyond that a request gets 503 with ``Retry-After`` at once, its body unread. ``on_shed`` is called for
    each (a counter). The connection is kept alive: under overload a reconnect costs more than the answer."""

    def __init__(
        self,
        app: ASGIApp,
        paths: frozenset[str],
        max_in_flight: int,
        on_shed: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.paths = paths
        self.max_in_flight = max_in_flight
        self.on_shed = on_shed
        self.in_flight = 0
        body = json.dumps(
            {
                "error": f"overloaded: {max_in_flight} requests already in progress in this worker; retry shortly"
            }
        ).encode()
        self._start = {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(OVERLOAD_RETRY_AFTER).encode()),
            ],
        }
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            if self.on_shed is not None:
                self.on_shed()
            start = self._start
            echo = [(name, value) for name, value in scope["headers"] if name == b"x-request-id"][:1]
            if echo:  # the client's id, echoed as on every answered request
                start = {**start, "headers": [*start["headers"], *echo]}
            await send(start)
            await send(self._body)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def routed_paths(app: Any) -> frozenset[str]:
    """Every path a Starlette app answers: its routes' paths and the files under its static mounts."""
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    paths: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route):
            if "{" in route.path:
                raise ValueError(f"route {route.path!r} has parameters: KnownRoutes lists exact paths only")
            paths.add(route.path)
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            for directory in route.app.all_directories:
                for parent, _, files in os.walk(directory):
                    relative = os.path.relpath(parent, directory)
                    prefix = route.path if relative == "." else f"{route.path}/{relative}"
                    paths.update(f"{prefix}/{name}" for name in files)
        else:
            raise ValueError(f"cannot list the paths of {route!r}: KnownRoutes would refuse them")
    return frozenset(paths)


def guard_routes(
    service: Any,
    on_unknown: Callable[[], None] | None = None,
    shed: tuple[frozenset[str], int, Callable[[], None] | None] | None = None,
) -> None:
    """Make a BentoML service's ``to_asgi`` (what ``bentoml serve`` hands uvicorn) return its app wrapped in
    :class:`KnownRoutes` over the app's own routes and, with ``shed`` (paths, max in flight, on_shed), in a
    :class:`LoadShedder` inside that. The service's class is swapped for a subclass: BentoML's ``Service`` is a
    slotted attrs class, so the method cannot be set on the instance."""
    base = type(service)
    if getattr(base, "_known_routes_guard", False):
        return

    class GuardedService(base):  # type: ignore[misc,valid-type]
        __slots__ = ()
        _known_routes_guard = True

        def to_asgi(self, is_main: bool = True) -> Any:
            app = base.to_asgi(self, is_main)
            paths = routed_paths(app)
            inner = app if shed is None else LoadShedder(app, shed[0], shed[1], shed[2])
            return KnownRoutes(inner, paths, on_unknown)

    GuardedService.__name__ = GuardedService.__qualname__ = base.__name__
    service.__class__ = GuardedService


def _arm(self: Any, seconds: float, what: str) -> None:
    """Close the connection (a uvicorn protocol) unless disarmed within ``seconds``."""
    _disarm(self)
    self._taxi_deadline = self.loop.call_later(seconds, _expire, self, what, seconds)


def _disarm(self: Any) -> None:
    handle = getattr(self, "_taxi_deadline", None)
    if handle is not None:
        handle.cancel()
        self._taxi_deadline = None


def _expire(self: Any, what: str, seconds: float) -> None:
    self._taxi_deadline = None
    if not self.transport.is_closing():
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closed a slow connection from %s: %s not received within %g s", client, what, seconds)
        self.transport.close()


def install_connection_timeouts(header: float = HEADER_TIMEOUT, body: float = BODY_TIMEOUT) -> None:
    """Give uvicorn's HTTP protocol (httptools, what uvicorn picks when it is installed) head and body deadlines.

    A connection is closed when its request head is not complete ``header`` seconds after it opened (or after
    the head's first byte, on a kept-alive connection), or its body ``body`` seconds after the head. Idle
    kept-alive connections are uvicorn's own ``timeout_keep_alive``. Idempotent.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol

    if getattr(Protocol, "_taxi_deadlines", None) == (header, body):
        return
    original = getattr(Protocol, "_taxi_original", None) or {
        name: getattr(Protocol, name)
        for name in (
            "connection_made",
            "connection_lost",
            "on_message_begin",
            "on_headers_complete",
            "on_message_complete",
        )
    }

    def connection_made(self: Any, transport: Any) -> None:
        original["connection_made"](self, transport)
        _arm(self, header, "request head")

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        original["connection_lost"](self, exc)

    def on_message_begin(self: Any) -> None:
        original["on_message_begin"](self)
        if getattr(self, "_taxi_deadline", None) is None:
            _arm(self, header, "request head")

    def on_headers_complete(self: Any) -> None:
        _arm(self, body, "request body")
        original["on_headers_complete"](self)

    def on_message_complete(self: Any) -> None:
        _disarm(self)
        original["on_message_complete"](self)

    Protocol._taxi_original = original
    Protocol._taxi_deadlines = (header, body)
    Protocol.connection_made = connection_made
    Protocol.connection_lost = connection_lost
    Protocol.on_message_begin = on_message_begin
    Protocol.on_headers_complete = on_headers_complete
    Protocol.on_message_complete = on_message_complete
