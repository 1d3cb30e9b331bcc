"""How the in-process endpoint server (roost.runtime.restate._http) stops when requests never end
by themselves, as Restate's invocation streams do: every request left after the grace period hears
``http.disconnect`` and ends, what it sends then is dropped, and nothing is logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from roost.runtime.restate._http import serve_asgi
from roost.runtime.restate._server import free_port


class Endless:
    """An ASGI app whose requests read their body until ``http.disconnect`` and then answer, as the
    Restate SDK does: the body of the client below never ends."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.disconnected = 0
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        self.started.set()
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected += 1
        await send({"type": "http.response.body", "body": b"bye", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.finished += 1


async def _endless_body() -> AsyncIterator[bytes]:
    yield b"x"
    await asyncio.Event().wait()  # never ends: cancelled with the client
    yield b""


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    caplog.set_level(logging.WARNING)
    return caplog.records


async def _serving(app: Endless, *, graceful_timeout: float,
                   http2: bool) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Task[Any]]:
    """serve_asgi(app) and one request in progress on it (HTTP/2 prior knowledge, as restate talks)."""
    port, shutdown, ready = free_port(), asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_asgi(app, port=port, shutdown=shutdown, ready=ready,
                                            graceful_timeout=graceful_timeout))
    await asyncio.wait_for(ready.wait(), 10)

    async def request() -> None:
        async with httpx.AsyncClient(http1=not http2, http2=http2, timeout=None) as client:
            async with client.stream("POST", f"http://127.0.0.1:{port}/", content=_endless_body()) as response:
                async for _ in response.aiter_bytes():
                    pass

    client = asyncio.create_task(request())
    await asyncio.wait_for(app.started.wait(), 10)
    return server, shutdown, client


async def _finish(server: asyncio.Task[None], client: asyncio.Task[Any]) -> float:
    """Seconds until ``server`` returns (bounded: a hang fails); then the client is dropped."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(server, 15)
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
    return time.monotonic() - start


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "http1.1"])
async def test_requests_left_after_the_grace_period_hear_of_a_disconnect(http2: bool,
                                                                           errors: list[logging.LogRecord]) -> None:
    app = Endless()
    server, shutdown, client = await _serving(app, graceful_timeout=0.2, http2=http2)
    shutdown.set()
    await _finish(server, client)
    assert (app.disconnected, app.finished) == (1, 1)  # its answer after the disconnect did not hang it
    assert not errors, [r.getMessage() for r in errors]


async def test_cancelling_skips_the_grace_period(errors: list[logging.LogRecord]) -> None:
    app = Endless()
    server, _, client = await _serving(app, graceful_timeout=60, http2=True)
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await _finish(server, client)
    assert (app.disconnected, app.finished) == (1, 1)
    assert not errors, [r.getMessage() for r in errors]
