"""Serve an ASGI app (a Restate endpoint) with hypercorn inside the running event loop.

restate-server talks to deployments over HTTP/2 cleartext with prior knowledge (no TLS, no
``Upgrade: h2c``): hypercorn recognises the HTTP/2 connection preface on a plain socket and switches
to HTTP/2 by itself, so no option is needed for it. What does need setting:

- ``keep_alive_max_requests`` (1000 by default): hypercorn closes a connection after that many
  requests, which fails every invocation in flight on it (they are retried, with long tail latency).
- ``h2_max_concurrent_streams`` (100 by default): each running invocation holds a stream.
- ``keep_alive_timeout``: restate keeps idle connections for minutes; do not cut them after 5 s.

Stopping is done here rather than by hypercorn's ``worker_serve``, which cannot stop a Restate
endpoint promptly. restate keeps an invocation's stream open while the invocation waits (for an
approval, a timer...), so those requests never end by themselves; ``worker_serve`` cancels them
once its grace period is over, but the SDK swallows the cancellation of a handler and then waits
for restate to close the stream, and hypercorn, cancelled half-way, logs tracebacks. Here, once
the grace period is over, every request left receives ``http.disconnect``, as when restate-server
goes away, and ends by itself (restate retries those invocations wherever the app is served next);
what it sends from then on is dropped, since hypercorn's HTTP/2 protocol would wait forever to
send it. There are no signal handlers here: the caller stops the server through ``shutdown``.

The listening socket is bound here (hypercorn leaks its socket when a bind fails, and marks it
inheritable). The ASGI ``lifespan`` protocol is not run: the Restate SDK's app rejects it.
hypercorn's messages go to the ``hypercorn.error`` logger rather than straight to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import Framework
from hypercorn.utils import wrap_app

__all__ = ["hypercorn_config", "serve_asgi"]

_UNLIMITED = 2**31 - 1

DROP_TIMEOUT = 1.0
"""Seconds each step of ending the connections left after the grace period gets (a stop is bounded)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[Any]]
"""Any ASGI 3 application (kept loose: callers' own scope/message types must fit)."""

_log = logging.getLogger("hypercorn.error")


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
    config.errorlog = _log
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
    shutdown, requests in progress get ``graceful_timeout`` seconds to finish; then those left
    receive ``http.disconnect`` and their connections are closed. Cancelling this skips the grace
    period. Returns once every connection has ended, or ``graceful_timeout`` + 3 s at most. Raises
    ``OSError`` when the address cannot be bound.
    """
    config = hypercorn_config(host, port, graceful_timeout=graceful_timeout)
    with _bind(host, port) as sock:
        await _Server(asgi_app, config).serve(sock, shutdown, ready)


class _Request:
    """One request's ``receive`` and ``send``, which :meth:`disconnect` ends from outside."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.gone = False  # the request has received http.disconnect: what it sends is dropped
        self._dropped = False
        self._receiving: asyncio.Task[Any] | None = None

    async def receive(self) -> Message:
        if self._dropped:
            return {"type": "http.disconnect"}
        task = self._receiving = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            # Cancelled by disconnect() alone (not by anyone else too): the request hears of it.
            if not self._dropped or task is None or task.uncancel() > 0:
                raise
            message = {"type": "http.disconnect"}
        finally:
            self._receiving = None
        self.gone = self.gone or message["type"] == "http.disconnect"
        return message

    async def send(self, message: Message) -> None:
        if not self.gone:
            await self._send(message)

    def disconnect(self) -> None:
        """Make the request receive ``http.disconnect`` now, whatever its connection is doing."""
        self._dropped = self.gone = True
        if self._receiving is not None:
            self._receiving.cancel()  # turned into http.disconnect by receive()


class _Server:
    """Connections accepted on one listening socket, each served by hypercorn's TCPServer."""

    def __init__(self, asgi_app: ASGIApp, config: Config) -> None:
        self.asgi_app, self.config = asgi_app, config
        self.app = wrap_app(cast(Framework, self._request), config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)  # its ``terminated`` tells hypercorn's protocols to wind down
        self.connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.requests: set[_Request] = set()

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
            await self._end_connections()

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(receive, send)
        self.requests.add(request)
        try:
            await self.asgi_app(scope, request.receive, request.send)
        finally:
            self.requests.discard(request)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            await TCPServer(self.app, asyncio.get_running_loop(), self.config, self.context, {}, reader, writer)
        except asyncio.CancelledError:
            pass  # ended by _end_connections, or at the loop's end (Python 3.11 would log it as an error)
        except Exception:
            if not self.context.terminated.is_set():
                raise
            _log.debug("a connection failed while the server stopped", exc_info=True)
        finally:
            del self.connections[task]

    async def _end_connections(self) -> None:
        """End the connections still open, each step more forceful than the last."""
        for step in (self._disconnect, self._abort, self._cancel):
            if not self.connections:
                return
            step()
            await self._wait(DROP_TIMEOUT)

    def _disconnect(self) -> None:
        """Tell every request the client went away, and shut the read side of every connection
        (hypercorn closes a connection at the end of its input)."""
        for request in list(self.requests):
            request.disconnect()
        for writer in self.connections.values():
            try:
                writer.get_extra_info("socket").shutdown(socket.SHUT_RD)
            except (AttributeError, OSError):  # closed already, or not a socket
                pass

    def _abort(self) -> None:
        for writer in self.connections.values():
            writer.transport.abort()

    def _cancel(self) -> None:
        for task in self.connections:
            task.cancel()

    async def _wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the open connections to end."""
        if self.connections and timeout > 0:
            await asyncio.wait(set(self.connections), timeout=timeout)


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
