"""Helpers for tests of ``roost ui``: the server in a thread of this process (its own event loop,
a free 127.0.0.1 port), runs left as a stopped process leaves them, and ``roost ui`` in a
subprocess on a prod runtime (Restate, Temporal) showing a run of ``roost run --prod``.

Every wait is bounded; the server stops through its shutdown event, its thread is joined;
subprocesses are stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from roost._loader import load_app
from roost.ui import RunSource, serve
from tests.cli_support import spawn, stop, wait_for, write_app

START_WITHIN = 30.0
"""Seconds the server gets to answer its first request (a bound for a loaded machine, not a speed check)."""

WAIT = 60.0
"""Seconds for what a run or the UI should show (a bound for a loaded machine, not a speed check)."""


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


# -- roost ui in a subprocess, on a prod runtime ------------------------------------------------


def get(url: str, **params: str) -> httpx.Response:
    return httpx.get(url, params=params, timeout=30)


def until(what: str, check: Callable[[], bool]) -> None:
    """Wait (up to WAIT seconds) until ``check()`` holds; a server not answering yet counts as not."""
    deadline = time.monotonic() + WAIT
    while not _holds(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT} s")
        time.sleep(0.2)


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def ui_of_a_waiting_run(env: dict[str, str], tmp_path: Path, runtime: str, app: str, run_id: str,
                        served: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``roost serve`` of tests.apps' pipeline (App ``app``, with the editor's approval) until it
    prints ``served``, ``roost run --prod`` of run ``run_id`` until it waits for that approval,
    and ``roost ui --runtime RUNTIME`` until it lists the run as waiting: yields the UI's base URL
    and the ``roost run`` process (output in ``tmp_path / "run.out"``). After: all three stopped
    by pid (``roost run`` killed), and the UI, stopped by SIGTERM, must have exited with 0."""
    app_file = write_app(tmp_path, name=app, approval=True)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        serving = spawn(env, tmp_path / "serve.out", tmp_path, "serve", app_file)
        procs.append((serving, signal.SIGTERM))
        wait_for(tmp_path / "serve.out", served, serving, timeout=WAIT)
        running = spawn(env, tmp_path / "run.out", tmp_path, "run", app_file, "--prod", "-i", '{"title": "owls"}',
                        "--run-id", run_id)
        procs.append((running, signal.SIGKILL))
        wait_for(tmp_path / "run.out", "waiting for approval of 'editor'", running, timeout=WAIT)

        port = free_port()
        ui = spawn(env, tmp_path / "ui.out", tmp_path, "ui", "--runtime", runtime, "--port", str(port))
        procs.append((ui, signal.SIGTERM))
        wait_for(tmp_path / "ui.out", f"http://127.0.0.1:{port}", ui, timeout=WAIT)
        base = f"http://127.0.0.1:{port}"
        until("the ui lists the waiting run", lambda: [r["run_id"] for r in get(
            f"{base}/api/runs", status="waiting").json()["runs"]] == [run_id])
        yield base, running
    finally:
        codes = [stop(proc, sig) for proc, sig in reversed(procs)]
    assert codes[0] == 0, (tmp_path / "ui.out").read_text()


def check_waiting_run(base: str, run_id: str, runtime: str, app: str) -> None:
    """The UI's record of the run waiting for the editor's approval, its graph drawn from its
    activations (the UI has no app code for a run on a prod runtime); an unknown run is a 404."""
    run = get(f"{base}/api/runs/{run_id}").json()
    assert run["runtime"] == runtime and run["app"] == app and run["waiting_on"] == ["editor"]
    assert run["graph"]["source"] == "activations"
    assert {n["id"]: n["status"] for n in run["graph"]["nodes"]} == {"writer": "completed", "editor": "waiting"}
    assert run["graph"]["edges"] == [{"source": "writer", "target": "editor"}]
    assert get(f"{base}/api/runs/nope").status_code == 404


def resolve_to_completion(base: str, run_id: str) -> dict[str, Any]:
    """Approve the editor through the UI's API; once the run has completed, its record (every
    agent of its graph completed)."""
    answered = httpx.post(f"{base}/api/runs/{run_id}/resolve", json={"name": "editor", "value": True}, timeout=60)
    assert answered.status_code == 200, answered.text
    until("the run completes", lambda: get(f"{base}/api/runs/{run_id}").json()["status"] == "completed")
    done: dict[str, Any] = get(f"{base}/api/runs/{run_id}").json()
    assert {n["id"]: n["status"] for n in done["graph"]["nodes"]} == dict.fromkeys(
        ("writer", "editor", "publisher"), "completed")
    return done
