"""Connecting to a Temporal server that has just started: the dev server counts as started only
once its frontend says it is healthy, and a client waits out 'Frontend is not healthy yet' (and
nothing else)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("temporalio")

from temporalio.client import Client  # noqa: E402

from roost.errors import BackendError  # noqa: E402
from roost.runtime._process import free_port  # noqa: E402
from roost.runtime.temporal import TemporalDevServer, TemporalRuntime  # noqa: E402
from roost.runtime.temporal import _runtime as temporal_runtime  # noqa: E402
from roost.runtime.temporal._server import find_temporal  # noqa: E402

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    started = TemporalDevServer(tmp_path_factory.mktemp("temporal-connect"), persist=False)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def test_a_started_dev_server_says_it_is_healthy(server: TemporalDevServer) -> None:
    done = subprocess.run([str(server.binary or find_temporal()), "operator", "cluster", "health",
                           "--address", server.address], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "SERVING" in done.stdout, done


@pytest.mark.asyncio
async def test_open_waits_out_a_frontend_not_healthy_yet(server: TemporalDevServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's answer while the frontend starts (injected twice before the real connect)."""
    real = Client.connect
    calls: list[int] = []

    async def starting(*args: Any, **kwargs: Any) -> Client:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("Failed client connect: `get_system_info` call error after connection: Status { code: "
                               "Unavailable, message: \"Frontend is not healthy yet\" }")
        return await real(*args, **kwargs)

    monkeypatch.setattr(temporal_runtime.Client, "connect", starting)
    runtime = TemporalRuntime(address=server.address, serve=False)
    await runtime.open()
    try:
        assert len(calls) == 3
    finally:
        await runtime.close()


@pytest.mark.asyncio
async def test_open_does_not_wait_on_a_server_that_is_not_there(tmp_path: Path) -> None:
    runtime = TemporalRuntime(address=f"127.0.0.1:{free_port()}", serve=False)
    with pytest.raises(BackendError, match="cannot reach Temporal at 127.0.0.1"):
        await runtime.open()
