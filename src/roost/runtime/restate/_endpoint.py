"""Serving apps as a Restate endpoint, in this process.

One hypercorn server per address serves every app version this process hosts; each version
lives under its own path (``/v/<version>``) and is registered with Restate at that URI, so
invocations already running keep the version that started them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import restate

from ..._graph import CompiledApp
from .._branches import install
from .._versions import code_version
from ._http import serve_asgi
from ._server import aregister_deployment
from ._services import services

_log = logging.getLogger("roost.restate")
ASGI = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class EndpointServer:
    """A hypercorn server dispatching ``/v/<version>/...`` to that version's Restate app."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.routes: dict[str, ASGI] = {}
        self._shutdown = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.users = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        parts = scope.get("path", "").split("/")
        app = self.routes.get(parts[2]) if len(parts) > 2 and parts[1] == "v" else None
        if app is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no such roost app version"})
            return
        await app(scope, receive, send)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                serve_asgi(self, host=self.host, port=self.port, shutdown=self._shutdown, ready=self._ready))
        waiter = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raises why serving failed (port taken, ...)
        if not self._ready.is_set():
            raise TimeoutError(f"the roost endpoint did not start listening on {self.host}:{self.port}")

    async def stop(self) -> None:
        self._shutdown.set()
        if self._task is not None:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling():  # the caller winds down (Ctrl-C...): no grace period
                self._task.cancel()
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception as exc:  # hypercorn tearing down streams still open (Restate retries them)
                _log.debug("endpoint %s:%s stopped with %r", self.host, self.port, exc)
            self._task = None


_SERVERS: dict[tuple[asyncio.AbstractEventLoop, str, int], EndpointServer] = {}


async def serve_app(app: CompiledApp, *, endpoint: str, admin: str, app_ref: str | None = None,
                    identity_keys: list[str] | None = None, register: bool = True) -> tuple[EndpointServer, str]:
    """Serve ``app`` at ``endpoint`` (shared per address in this process) and register it."""
    install(asyncio.get_running_loop())  # branch positions inside activations (runtime/_branches.py)
    url = urlsplit(endpoint)
    host, port = url.hostname or "127.0.0.1", url.port or 9080
    key = (asyncio.get_running_loop(), host, port)
    server = _SERVERS.get(key)
    if server is None:
        server = _SERVERS[key] = EndpointServer(host, port)
    version = code_version(app, app_ref)
    # The latest app object of a version wins (same code, or a test re-using an app name).
    server.routes[version] = restate.app(services(app), identity_keys=identity_keys or None)
    server.users += 1
    uri = f"http://{host}:{port}/v/{version}"
    try:
        await server.start()
        if register:
            await aregister_deployment(admin, uri)
    except BaseException:
        await release(server)  # nothing left listening or counted when serving or registering fails
        raise
    return server, uri


async def release(server: EndpointServer) -> None:
    server.users -= 1
    if server.users <= 0:
        for k, v in list(_SERVERS.items()):
            if v is server:
                del _SERVERS[k]
        await server.stop()
