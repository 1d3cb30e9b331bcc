"""The local restate-server harness (roost.runtime.restate._server), the in-process HTTP/2 endpoint
server (_http) and ``roost dev restate``: real servers on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import restate  # noqa: E402 - the restate extra is part of the test install

from roost.errors import ConfigError
from roost.runtime.restate._http import serve_asgi
from roost.runtime.restate._server import (
    ALWAYS_REPLAY_ENV,
    RestateServer,
    RestateServerError,
    aadmin_query,
    admin_query,
    aregister_deployment,
    find_restate_server,
    free_port,
    install_command,
    wait_service,
)
from tests.restate_support import REPO_ROOT, restate_binary, serve_endpoint, start_test_server

# -- helpers ----------------------------------------------------------------------------------------


def counting_service(name: str) -> tuple[Any, dict[str, int]]:
    """A Service whose handler counts how often its body runs, and how often each of its two
    ``ctx.run`` actions runs."""
    service = restate.Service(name)
    counts = {"body": 0, "a": 0, "b": 0}

    def action(key: str, value: str) -> str:
        counts[key] += 1
        return value

    @service.handler()
    async def greet(ctx: Any, who: str) -> str:
        counts["body"] += 1  # outside ctx.run: runs again on every replay
        a = await ctx.run_typed("a", action, key="a", value="hello")
        b = await ctx.run_typed("b", action, key="b", value=who)
        return f"{a} {b}"

    return service, counts


def recording(asgi_app: Any, versions: list[str]) -> Callable[..., Any]:
    """``asgi_app``, noting the HTTP version of each request."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            versions.append(scope["http_version"])
        await asgi_app(scope, receive, send)

    return app


async def invoke(server: RestateServer, service: str, arg: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{server.ingress_url}/{service}/greet", json=arg)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestateServer]:
    srv = start_test_server(tmp_path / "restate")
    try:
        yield srv
    finally:
        srv.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- without a server -------------------------------------------------------------------------------


def test_explicit_binary_must_be_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_RESTATE_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"\$ROOST_RESTATE_SERVER .* not an executable"):
        find_restate_server(install=False, root=tmp_path)


def test_missing_binary_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOST_RESTATE_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither restate-server nor npm
    command = " ".join(install_command(tmp_path))
    assert command == (f"npm install --no-audit --no-fund --prefix {tmp_path / '.roost' / 'npm'} "
                       "@restatedev/restate-server@1.7.12 @restatedev/restate@1.7.12")
    with pytest.raises(ConfigError, match="install it with: npm install") as not_installing:
        find_restate_server(install=False, root=tmp_path)
    assert command in str(not_installing.value)
    with pytest.raises(ConfigError, match="npm is not on PATH") as no_npm:
        find_restate_server(install=True, root=tmp_path)
    assert command in str(no_npm.value)


def test_binary_found_under_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = restate_binary()  # installs it if missing
    monkeypatch.delenv("ROOST_RESTATE_SERVER", raising=False)
    monkeypatch.setenv("PATH", os.defpath)
    if expected.parent.parent.name.startswith("restate-server-"):  # not an override from PATH / env
        assert find_restate_server(install=False, root=REPO_ROOT) == expected


def test_server_environment_is_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTATE_INGRESS__BIND_ADDRESS", "0.0.0.0:8080")  # not passed on
    srv = RestateServer(tmp_path, ingress_port=1111, admin_port=2222, node_port=3333, always_replay=True)
    env = srv.environment()
    assert env["RESTATE_INGRESS__BIND_ADDRESS"] == "127.0.0.1:1111"
    assert env["RESTATE_ADMIN__BIND_ADDRESS"] == "127.0.0.1:2222"
    assert env["RESTATE_BIND_ADDRESS"] == "127.0.0.1:3333"
    assert env["RESTATE_LISTEN_MODE"] == "tcp"
    assert env["RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT"] == "0s" == ALWAYS_REPLAY_ENV[
        "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT"]
    assert (srv.ingress_url, srv.admin_url, srv.pid, srv.running) == (
        "http://127.0.0.1:1111", "http://127.0.0.1:2222", None, False)
    assert "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT" not in RestateServer(tmp_path).environment()


async def test_serve_asgi_speaks_http2_prior_knowledge_and_http11() -> None:
    async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["http_version"].encode()})

    port = free_port()
    shutdown, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_asgi(hello, port=port, shutdown=shutdown, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with httpx.AsyncClient(http1=False, http2=True) as h2c:  # prior knowledge, as restate does
            response = await h2c.get(f"http://127.0.0.1:{port}/")
            assert (response.http_version, response.text) == ("HTTP/2", "2")
        async with httpx.AsyncClient() as h11:
            assert (await h11.get(f"http://127.0.0.1:{port}/")).text == "1.1"
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 10)
    assert not _listening(port)


async def test_serve_asgi_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ready = asyncio.Event()
        with pytest.raises(OSError):
            await asyncio.wait_for(serve_asgi(lambda *a: None, port=taken.getsockname()[1],
                                              shutdown=asyncio.Event(), ready=ready), 10)
        assert not ready.is_set()


# -- with a real server ------------------------------------------------------------------------------


@pytest.mark.restate
async def test_invoke_through_ingress_and_find_it_in_sys_invocation(server: RestateServer) -> None:
    service, counts = counting_service("HarnessGreeter")
    versions: list[str] = []
    async with serve_endpoint(recording(restate.app([service]), versions)) as uri:
        deployment = await aregister_deployment(server.admin_url, uri)
        assert [s["name"] for s in deployment["services"]] == ["HarnessGreeter"]
        assert wait_service(server.admin_url, "HarnessGreeter")["name"] == "HarnessGreeter"

        response = await invoke(server, "HarnessGreeter", "bob")
        assert (response.status_code, response.json()) == (200, "hello bob")
        assert counts == {"body": 1, "a": 1, "b": 1}  # no replay by default
        assert set(versions) == {"2"}  # restate-server reached it over HTTP/2 cleartext

        rows = await aadmin_query(server.admin_url, "SELECT id, target, status, completion_failure "
                                                    "FROM sys_invocation WHERE target_service_name = 'HarnessGreeter'")
        assert len(rows) == 1
        assert rows[0]["target"] == "HarnessGreeter/greet"
        assert rows[0]["status"] == "completed"
        assert rows[0]["id"].startswith("inv_")
        assert "completion_failure" not in rows[0]  # NULL columns are left out of a row
        assert admin_query(server.admin_url, "SELECT 1 AS one") == [{"one": 1}]
        with pytest.raises(RestateServerError, match="HTTP 400"):
            await aadmin_query(server.admin_url, "SELEC nothing")


@pytest.mark.restate
async def test_kill_and_restart_keep_deployments_and_history(server: RestateServer) -> None:
    service, counts = counting_service("Survivor")
    async with serve_endpoint(restate.app([service])) as uri:
        deployment_id = (await aregister_deployment(server.admin_url, uri))["id"]
        assert (await invoke(server, "Survivor", "one")).status_code == 200
        first_pid = server.pid
        assert first_pid is not None

        assert server.kill() == -signal.SIGKILL
        assert (server.pid, server.running) == (None, False)
        assert not _listening(server.admin_port)

        await asyncio.to_thread(server.restart)
        assert server.running and server.pid not in (None, first_pid)
        async with httpx.AsyncClient() as client:
            listed = (await client.get(f"{server.admin_url}/deployments")).json()["deployments"]
        assert [d["id"] for d in listed] == [deployment_id]
        assert (await invoke(server, "Survivor", "two")).json() == "hello two"  # no re-registration
        rows = await aadmin_query(server.admin_url,
                                  "SELECT status FROM sys_invocation WHERE target_service_name = 'Survivor'")
        assert [r["status"] for r in rows] == ["completed", "completed"]
        assert counts["body"] == 2

        assert server.stop() == 0  # SIGTERM: a clean shutdown
        assert not server.running


@pytest.mark.restate
async def test_always_replay_replays_the_handler_at_every_step(tmp_path: Path) -> None:
    srv = start_test_server(tmp_path / "restate", always_replay=True)
    try:
        service, counts = counting_service("Replayed")
        async with serve_endpoint(restate.app([service])) as uri:
            await aregister_deployment(srv.admin_url, uri)
            response = await invoke(srv, "Replayed", "ann")
            assert (response.status_code, response.json()) == (200, "hello ann")
        # The body ran once, then again after each of the two ctx.run steps (suspend + replay);
        # the journaled actions themselves ran once each.
        assert counts == {"body": 3, "a": 1, "b": 1}
    finally:
        srv.stop()


@pytest.mark.restate
def test_start_fails_fast_naming_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = RestateServer(tmp_path / "restate", ingress_port=port, binary=restate_binary())
        started = time.monotonic()
        with pytest.raises(RestateServerError, match=rf"port {port} \(ingress\) of 127\.0\.0\.1 is in use"):
            srv.start(timeout=10)
        assert time.monotonic() - started < 10
        assert not srv.running


@pytest.mark.restate
def test_roost_dev_restate_runs_until_sigterm(tmp_path: Path) -> None:
    ingress, admin, node = free_port(), free_port(), free_port()
    data = tmp_path / "data"
    env = {**os.environ, "ROOST_RESTATE_SERVER": str(restate_binary())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "dev", "restate", "--ingress-port", str(ingress),
         "--admin-port", str(admin), "--node-port", str(node), "--data", str(data)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True)
    reader.start()
    try:
        deadline, out = time.monotonic() + 20, ""
        while "Ctrl-C stops it." not in out:  # printed once the server is ready
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"roost dev restate did not start in 20 s: {out}"
            with contextlib.suppress(queue.Empty):
                out += lines.get(timeout=min(remaining, 0.5))
            assert proc.poll() is None or not lines.empty(), out
        assert _healthy(f"http://127.0.0.1:{admin}/health")
        assert _healthy(f"http://127.0.0.1:{ingress}/restate/health")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
        while not lines.empty():
            out += lines.get()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()
    assert proc.returncode == 0, out
    assert f"ingress  http://127.0.0.1:{ingress}" in out
    assert (f"export ROOST_RUNTIME=restate ROOST_RESTATE_INGRESS=http://127.0.0.1:{ingress} "
            f"ROOST_RESTATE_ADMIN=http://127.0.0.1:{admin}") in out
    assert "restate-server stopped" in out
    assert (data / "restate.log").is_file()
    assert not _listening(admin) and not _listening(ingress)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
