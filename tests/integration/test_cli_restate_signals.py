"""``roost run --prod`` on Restate stopped by Ctrl-C (SIGINT) or SIGTERM, against a real restate-server.

The process must end by itself, with one line on stderr, no traceback and exit status 128 + the
signal, whatever the run was doing in it (waiting for an approval, or running a sync step in a
thread); the run stays on Restate and finishes once its app is served again (here by the same
command, which attaches to the run). Each process is signalled by its own pid, once the run is in
flight there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.runtime.restate._server import RestateServer, free_port
from tests.cli_support import OWLS, clean_env, outputs_of, roost, stop, wait_for, write_app
from tests.restate_support import start_test_server

pytestmark = pytest.mark.restate

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])

ENDS_WITHIN = 15.0
"""Seconds a signalled process gets to end by itself. It takes well under one: this is not a speed
bound, only one no loaded machine should miss."""

FINISHES_WITHIN = 60.0
"""Seconds a resumed run gets to finish (Restate retries the invocations cut off, with backoff)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    started = start_test_server(tmp_path_factory.mktemp("restate-signals"))
    yield started
    started.stop()


@pytest.fixture
def env(server: RestateServer, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's server, a free endpoint port, no project settings."""
    return clean_env(ROOST_RUNTIME="restate", ROOST_RESTATE_INGRESS=server.ingress_url,
                     ROOST_RESTATE_ADMIN=server.admin_url, ROOST_RESTATE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                     ROOST_JOURNAL=str(tmp_path / "unused.db"))  # a local journal must not be touched


BLOCKING_APP = '''
import time
from pathlib import Path

from pydantic import BaseModel
from roost import App, agent


class Topic(BaseModel):
    title: str


class Draft(BaseModel):
    text: str


def write(t: Topic) -> Draft:
    """A long sync step (it runs in a thread): each attempt says it started, then waits for the gate."""
    Path({started!r}).touch()
    deadline = time.monotonic() + 120
    while not Path({gate!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return Draft(text=f"about {{t.title}}")


writer = agent("writer").contracts(input=Topic, output=Draft).engine(write)
app = App([writer], name={name!r})
'''


def _run(env: dict[str, str], tmp_path: Path, app_file: Path, run_id: str,
         tag: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``roost run APP --prod`` on the owls input, in a subprocess; its stdout and stderr files."""
    out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "roost.cli", "run", str(app_file), "--prod",
                                 "--input", '{"title": "owls"}', "--run-id", run_id],
                                stdout=stdout, stderr=stderr, env=env, cwd=tmp_path)
    return proc, out, err


def _wait_until(condition: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the file ``condition`` exists; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before {condition.name} appeared"
        assert time.monotonic() < deadline, f"{condition.name} did not appear within {timeout:.0f} s"
        time.sleep(0.05)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> int | None:
    """Send ``sig`` to ``proc`` (by its pid) and wait for it to end by itself: its exit status, or
    None if it did not end within ENDS_WITHIN seconds."""
    proc.send_signal(sig)
    try:
        return proc.wait(ENDS_WITHIN)
    except subprocess.TimeoutExpired:
        return None


def _assert_stopped_quietly(code: int | None, sig: int, run_id: str, out: Path, err: Path) -> None:
    printed = f"stdout:\n{out.read_text()}\nstderr:\n{err.read_text()}"
    assert code is not None, f"still running {ENDS_WITHIN:.0f} s after {signal.Signals(sig).name}\n{printed}"
    assert code == 128 + sig, printed
    assert "Traceback" not in out.read_text() + err.read_text(), printed
    lines = err.read_text().splitlines()
    assert len(lines) == 1, printed  # one line saying where the run is and how it goes on
    assert f"run {run_id} stays on Restate" in lines[0] and "roost serve" in lines[0], printed


@SIGNALS
def test_run_waiting_for_an_approval(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    run_id = f"sig-approval-{sig.name.lower()}"
    app_file = write_app(tmp_path, name=f"signals_approval_{sig.name.lower()}", approval=True)
    waits = f"roost resolve {run_id} editor"  # the hint printed once the run waits (for its approval)
    running, out, err = _run(env, tmp_path, app_file, run_id, "run")
    try:
        wait_for(out, waits, running, timeout=60)
        code = _signal(running, sig)
    finally:
        stop(running, signal.SIGKILL)
    _assert_stopped_quietly(code, sig, run_id, out, err)

    # the same command attaches to the run and serves its app; approved, the run finishes
    again, again_out, again_err = _run(env, tmp_path, app_file, run_id, "again")
    try:
        wait_for(again_out, waits, again, timeout=FINISHES_WITHIN)
        resolved = roost(env, "resolve", run_id, "editor", "true", "--runtime", "restate")
        assert resolved.exit_code == 0, resolved.output
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == OWLS, again_out.read_text()


@SIGNALS
def test_run_in_a_long_sync_step(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    """The step's thread cannot be stopped: the process exits without waiting for it (Restate runs
    the step again once the app is served again)."""
    run_id = f"sig-step-{sig.name.lower()}"
    started, gate = tmp_path / "started", tmp_path / "gate"
    app_file = tmp_path / "blocking.py"
    app_file.write_text(BLOCKING_APP.format(started=str(started), gate=str(gate),
                                            name=f"signals_step_{sig.name.lower()}"))
    running, out, err = _run(env, tmp_path, app_file, run_id, "run")
    try:
        _wait_until(started, running)
        code = _signal(running, sig)
    finally:
        stop(running, signal.SIGKILL)
    _assert_stopped_quietly(code, sig, run_id, out, err)

    gate.touch()
    again, again_out, again_err = _run(env, tmp_path, app_file, run_id, "again")
    try:
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == {"writer": {"text": "about owls"}}, again_out.read_text()
