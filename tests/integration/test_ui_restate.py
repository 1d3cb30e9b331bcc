"""``roost ui --runtime restate`` against a real restate-server, through its JSON API: the list
shows a run waiting on an approval, its record and graph (from its activations: the UI has no app
code for a Restate run), and resolving it from the API lets the run finish under ``roost serve``.
Every process is stopped by pid; every wait is bounded."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_support import clean_env, spawn, stop, wait_for, write_app
from tests.restate_support import start_test_server
from tests.ui_support import free_port

pytest.importorskip("restate")
pytest.importorskip("starlette")

from roost.runtime.restate._server import RestateServer  # noqa: E402

pytestmark = pytest.mark.restate

WAIT = 60.0
"""Seconds for what the run or the UI should show (a bound for a loaded machine, not a speed check)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    started = start_test_server(tmp_path_factory.mktemp("restate-ui"))
    try:
        yield started
    finally:
        started.stop()


def _get(url: str, **params: str) -> httpx.Response:
    return httpx.get(url, params=params, timeout=30)


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT} s")
        time.sleep(0.2)


def test_ui_api_on_restate(server: RestateServer, tmp_path: Path) -> None:
    env = clean_env(ROOST_RUNTIME="restate", ROOST_RESTATE_INGRESS=server.ingress_url,
                    ROOST_RESTATE_ADMIN=server.admin_url, ROOST_RESTATE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                    ROOST_JOURNAL=str(tmp_path / "unused.db"))  # a local journal must not be touched
    app_file = write_app(tmp_path, name="ui_restate", approval=True)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        serving = spawn(env, tmp_path / "serve.out", tmp_path, "serve", app_file)
        procs.append((serving, signal.SIGTERM))
        wait_for(tmp_path / "serve.out", "serving app", serving, timeout=WAIT)
        running = spawn(env, tmp_path / "run.out", tmp_path, "run", app_file, "--prod", "-i", '{"title": "owls"}',
                        "--run-id", "ui-r1")
        procs.append((running, signal.SIGKILL))
        wait_for(tmp_path / "run.out", "waiting for approval of 'editor'", running, timeout=WAIT)

        port = free_port()
        ui = spawn(env, tmp_path / "ui.out", tmp_path, "ui", "--runtime", "restate", "--port", str(port))
        procs.append((ui, signal.SIGTERM))
        wait_for(tmp_path / "ui.out", f"http://127.0.0.1:{port}", ui, timeout=WAIT)
        base = f"http://127.0.0.1:{port}"
        _until("the ui lists the waiting run", lambda: [r["run_id"] for r in _get(
            f"{base}/api/runs", status="waiting").json()["runs"]] == ["ui-r1"])
        assert _get(f"{base}/api/runs", status="completed").json()["runs"] == []

        run = _get(f"{base}/api/runs/ui-r1").json()
        assert run["runtime"] == "restate" and run["app"] == "ui_restate" and run["waiting_on"] == ["editor"]
        assert run["graph"]["source"] == "activations"
        assert {n["id"]: n["status"] for n in run["graph"]["nodes"]} == {"writer": "completed", "editor": "waiting"}
        assert run["graph"]["edges"] == [{"source": "writer", "target": "editor"}]
        assert _get(f"{base}/api/runs/nope").status_code == 404
        page = _get(f"{base}/runs/ui-r1")
        assert page.status_code == 200 and "<title>roost run</title>" in page.text  # the page draws from the API

        answered = httpx.post(f"{base}/api/runs/ui-r1/resolve", json={"name": "editor", "value": True}, timeout=60)
        assert answered.status_code == 200, answered.text
        _until("the run completes", lambda: _get(f"{base}/api/runs/ui-r1").json()["status"] == "completed")
        done = _get(f"{base}/api/runs/ui-r1").json()
        assert done["waiting_on"] == []
        assert {n["id"]: n["status"] for n in done["graph"]["nodes"]} == dict.fromkeys(
            ("writer", "editor", "publisher"), "completed")
        assert running.wait(timeout=WAIT) == 0, (tmp_path / "run.out").read_text()
        assert "ABOUT OWLS" in (tmp_path / "run.out").read_text()
    finally:
        codes = [stop(proc, sig) for proc, sig in reversed(procs)]
    assert codes[0] == 0, (tmp_path / "ui.out").read_text()
