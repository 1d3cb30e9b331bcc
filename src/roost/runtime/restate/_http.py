"""Serve an ASGI app (a Restate endpoint) with hypercorn inside the running event loop.

restate-server talks to deployments over HTTP/2 cleartext with prior knowledge (no TLS, no
``Upgrade: h2c``): hypercorn recognises the HTTP/2 connection preface on a plain socket and switches
to HTTP/2 by itself, so no option is needed for it. What does need setting:

- ``keep_alive_max_requests`` (1000 by default): hypercorn closes a connection after that many
  requests, which fails every invocation in flight on it (they are retried, with long tail latency).
- ``h2_max_concurrent_streams`` (100 by default): each running invocation holds a stream.
- ``keep_alive_timeout``: restate keeps idle connections for minutes; do not cut them after 5 s.

Connections are accepted here, each served by hypercorn's ``TCPServer``, rather than through
hypercorn's ``worker_serve``, because stopping needs what ``worker_serve`` does not do. restate
keeps the stream of an invocation open while the invocation waits (for an approval, a timer...),
so those requests never end by themselves; ``worker_serve`` cancels them after its grace period,
and cancelling does not end them either: the SDK swallows the cancellation of a handler and then
waits for restate to close the stream, while hypercorn, cancelled half-way, logs tracebacks. Here,
once the grace period is over, the read side of every connection left is shut: each request sees
``http.disconnect``, exactly as when restate-server goes away, and ends by itself (restate retries
those invocations wherever the app is served next). There are no signal handlers here: the caller
stops the server through ``shutdown``.

The listening socket is bound here (hypercorn leaks its socket when a bind fails, and marks it
inheritable). The ASGI ``lifespan`` protocol is not run: the Restate SDK's app rejects it.
hypercorn's messages go to the ``hypercorn.error`` logger rather than straight to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import AppWrapper, Framework
from hypercorn.utils import wrap_app

__all__ = ["hypercorn_config", "serve_asgi"]

_UNLIMITED = 2**31 - 1

DROP_TIMEOUT = 1.0
"""Seconds each step of dropping the connections left after the grace period gets (a stop is bounded)."""

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


async def serve_asgi(
    asgi_app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int,
    shutdown: asyncio.Event,
    ready: asyncio.Event | None = None,
    graceful_timeout: float = 1.0,
) -> None:
    """Serve ``asgi_app`` (e.g. ``restate.app([...])``) on ``host:port`` until ``shutdown`` is set.

    ``ready`` is set once the socket listens (connections made from then on are served). At
    shutdown, requests in progress get ``graceful_timeout`` seconds to finish; then those left see
    ``http.disconnect`` and their connections close. Cancelling this skips the grace period. Returns
    once every connection has ended (within ``graceful_timeout`` + 3 s at most). Raises ``OSError``
    when the address cannot be bound.
    """
    config = hypercorn_config(host, port, graceful_timeout=graceful_timeout)
    app = wrap_app(cast(Framework, asgi_app), config.wsgi_max_body_size, "asgi")
    with _bind(host, port) as sock:
        await _Connections(app, config).serve(sock, shutdown, ready)


class _Connections:
    """The connections of one listening socket, each served by hypercorn's TCPServer."""

    def __init__(self, app: AppWrapper, config: Config) -> None:
        self.app, self.config = app, config
        self.context = WorkerContext(None)  # its ``terminated`` tells hypercorn's protocols to wind down
        self.open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def serve(self, sock: socket.socket, shutdown: asyncio.Event, ready: asyncio.Event | None) -> None:
        server = await asyncio.start_server(self._connection, sock=sock, backlog=self.config.backlog)
        try:
            if ready is not None:
                ready.set()
            await shutdown.wait()
            server.close()
            await self.context.terminated.set()  # idle connections close, new HTTP/2 streams are refused
            await self._wait(self.config.graceful_timeout)
        finally:
            server.close()
            await self.context.terminated.set()
            await self._drop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            await TCPServer(self.app, asyncio.get_running_loop(), self.config, self.context, {}, reader, writer)
        finally:
            del self.open[task]

    async def _drop(self) -> None:
        """End the connections still open, each step more forceful than the last: shut their read
        side (hypercorn then sends ``http.disconnect`` to their requests, which end by themselves;
        replies still go out), abort them, cancel their tasks."""
        for end in (_shut_read, _abort, _cancel):
            if not self.open:
                return
            for task, writer in list(self.open.items()):
                end(task, writer)
            await self._wait(DROP_TIMEOUT)

    async def _wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the open connections to end."""
        if self.open and timeout > 0:
            await asyncio.wait(set(self.open), timeout=timeout)


def _shut_read(task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
    try:
        writer.get_extra_info("socket").shutdown(socket.SHUT_RD)
    except (AttributeError, OSError):  # closed already, or not a socket
        pass


def _abort(task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


def _cancel(task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
    task.cancel()


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
