"""Helpers for tests that need a real restate-server (mark them ``@pytest.mark.restate``).

Fixtures cannot be shared from a plain module, so this gives functions; a conftest wraps them::

    import pytest
    from tests.restate_support import start_test_server

    @pytest.fixture(scope="session")
    def restate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
        server = start_test_server(tmp_path_factory.mktemp("restate"))
        yield server
        server.stop()

and a test serves its Restate services on a free port and registers them::

    async with serve_endpoint(restate.app([greeter])) as uri:
        await aregister_deployment(restate_server.admin_url, uri)
        httpx.post(f"{restate_server.ingress_url}/Greeter/greet", json="you")

Each server gets free loopback ports and its own data directory; the binary is found (or npm-installed)
under the repository's ``.roost/npm``, whatever the current directory. One server per session is
enough for most tests: deployments are registered with ``force``, so give each test's services
names of their own (re-registering a name with different handlers under live invocations breaks them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from roost.runtime.restate._http import serve_asgi
from roost.runtime.restate._server import RestateServer, find_restate_server, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def restate_binary() -> Path:
    """The restate-server binary for tests (installed under ``REPO_ROOT/.roost/npm`` when missing)."""
    return find_restate_server(install=True, root=REPO_ROOT)


def start_test_server(tmp_dir: Path, always_replay: bool = False, **options: Any) -> RestateServer:
    """Start a restate-server with its data in ``tmp_dir`` on free 127.0.0.1 ports and return it, healthy.

    ``always_replay`` makes every invocation suspend and replay at each step. ``options`` go to
    :class:`RestateServer` (ports, ``env``, ``log_file``). Stop it with ``server.stop()`` (or use it
    as a context manager); its log is ``tmp_dir / "restate.log"``.
    """
    server = RestateServer(Path(tmp_dir), always_replay=always_replay, binary=restate_binary(), **options)
    server.start()
    return server


@contextlib.asynccontextmanager
async def serve_endpoint(asgi_app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve ``asgi_app`` (e.g. ``restate.app([...])``) in this event loop on 127.0.0.1; yields its URI.

    Register the URI with ``aregister_deployment`` (not the blocking ``register_deployment``: the
    server calls the endpoint back while registering, and this loop must be free to answer).
    """
    port = port or free_port()
    shutdown, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_asgi(asgi_app, port=port, shutdown=shutdown, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it could not serve (port taken...)
        if not ready.is_set():
            raise TimeoutError(f"the endpoint did not listen on 127.0.0.1:{port} within 10 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        waiter.cancel()
        shutdown.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
