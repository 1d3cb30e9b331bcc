"""Serve an ASGI app (a Restate endpoint) with hypercorn inside the running event loop.

restate-server talks to deployments over HTTP/2 cleartext with prior knowledge (no TLS, no
``Upgrade: h2c``): hypercorn recognises the HTTP/2 connection preface on a plain socket and switches
to HTTP/2 by itself, so no option is needed for it. What does need setting:

- ``keep_alive_max_requests`` (1000 by default): hypercorn closes a connection after that many
  requests, which fails every invocation in flight on it (they are retried, with long tail latency).
- ``h2_max_concurrent_streams`` (100 by default): each running invocation holds a stream.
- ``keep_alive_timeout``: restate keeps idle connections for minutes; do not cut them after 5 s.
- a shutdown trigger instead of signal handlers (hypercorn's own SIGTERM handling can hang while
  restate holds connections open), and a short ``graceful_timeout`` since those connections never
  close by themselves.

The listening socket is bound here and handed to hypercorn (``worker_serve``, which its ``serve``
wraps): hypercorn leaks its socket when the bind fails, and marks it inheritable.

The Restate SDK's ASGI app rejects the ASGI ``lifespan`` protocol, which makes hypercorn log a
warning; :func:`serve_asgi` answers lifespan events itself unless told the app handles them.
hypercorn's messages go to the ``hypercorn.error`` logger rather than straight to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.typing import Framework
from hypercorn.utils import wrap_app

__all__ = ["hypercorn_config", "serve_asgi"]

_UNLIMITED = 2**31 - 1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[Any]]
"""Any ASGI 3 application (kept loose: callers' own scope/message types must fit)."""


def hypercorn_config(host: str, port: int, *, graceful_timeout: float = 1.0) -> Config:
    """The hypercorn configuration :func:`serve_asgi` uses (HTTP/2 cleartext and HTTP/1.1 on one port;
    ``bind`` is informative: serve_asgi binds the socket itself)."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.keep_alive_max_requests = _UNLIMITED
    config.h2_max_concurrent_streams = _UNLIMITED
    config.keep_alive_timeout = _UNLIMITED
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def _without_lifespan(asgi_app: ASGIApp) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``asgi_app`` with ASGI lifespan events acknowledged here instead of passed on."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await asgi_app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


async def serve_asgi(
    asgi_app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int,
    shutdown: asyncio.Event,
    ready: asyncio.Event | None = None,
    graceful_timeout: float = 1.0,
    lifespan: bool = False,
) -> None:
    """Serve ``asgi_app`` (e.g. ``restate.app([...])``) on ``host:port`` until ``shutdown`` is set.

    ``ready`` is set once the socket listens (connections made from then on are served). Requests in
    progress at shutdown get ``graceful_timeout`` seconds to finish before their connections are
    dropped. ``lifespan=True`` passes ASGI lifespan events to the app (the Restate SDK's app does not
    handle them). Raises ``OSError`` when the address cannot be bound.
    """

    async def trigger() -> None:
        # hypercorn awaits the trigger only once every listening socket is open.
        if ready is not None:
            ready.set()
        await shutdown.wait()

    config = hypercorn_config(host, port, graceful_timeout=graceful_timeout)
    app = wrap_app(cast(Framework, asgi_app if lifespan else _without_lifespan(asgi_app)),
                   config.wsgi_max_body_size, "asgi")
    with _bind(host, port) as sock:
        await worker_serve(app, config, sockets=Sockets([], [sock], []), shutdown_trigger=trigger)


def _bind(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (not yet listening)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
