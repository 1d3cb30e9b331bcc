"""Helpers for tests of ``roost ui``: the server in a thread of this process (its own event loop,
a free 127.0.0.1 port), and runs left as a stopped process leaves them.

Every wait is bounded; the server stops through its shutdown event, its thread is joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from roost._loader import load_app
from roost.ui import RunSource, serve

START_WITHIN = 30.0
"""Seconds the server gets to answer its first request (a bound for a loaded machine, not a speed check)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ui_server(source: RunSource) -> Iterator[str]:
    """``roost ui``'s server for ``source`` in a thread; yields its base URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(source, port, stop))
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting test
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="roost-ui-test", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_WITHIN
        while True:
            if failure or not thread.is_alive():
                raise AssertionError(f"the ui server stopped: {failure!r}")
            try:
                if httpx.get(f"{base}/api/runs", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the ui server did not answer within {START_WITHIN} s")
            time.sleep(0.1)
        yield base
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: it stopped already
                loop.call_soon_threadsafe(stop.set)
        thread.join(START_WITHIN)
        assert not thread.is_alive(), "the ui server did not stop"


async def leave_waiting(app_file: Path, journal: Path, run_id: str, title: str = "owls") -> None:
    """Start a run of ``app_file``'s app that waits for the approval of 'editor', then close its
    runtime as a stopped process would: nothing runs it any more."""
    app = load_app(str(app_file))
    app.journal = journal
    try:
        handle = await app.start({"title": title}, run_id)
        assert await handle.approval(timeout=30) == "editor"
    finally:
        await app.aclose()


async def run_to_end(app_file: Path, journal: Path, run_id: str, title: str = "owls") -> None:
    app = load_app(str(app_file))
    app.journal = journal
    try:
        await app.arun({"title": title}, run_id, timeout=30)
    finally:
        await app.aclose()
