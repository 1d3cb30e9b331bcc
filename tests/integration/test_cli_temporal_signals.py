"""``roost run --prod`` on Temporal stopped by Ctrl-C (SIGINT) or SIGTERM, against a real dev server.

The process must end by itself, with one line saying where the run is, no traceback and exit
status 128 + the signal, whatever the run was doing in it (waiting for an approval, or running a
sync step in a thread); the run stays on Temporal and finishes once a worker serves its app
again (here the same command, which attaches to the run). Each process is signalled by its own
pid, once the run is in flight there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import OWLS, clean_env, outputs_of, roost, stop, wait_for, write_app

pytest.importorskip("temporalio")

from roost.runtime.temporal import TemporalDevServer  # noqa: E402

pytestmark = pytest.mark.temporal

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])

ENDS_WITHIN = 20.0
"""Seconds a signalled process gets to end by itself. It takes about one (a step in flight gets
the worker's one-second grace period): this is not a speed bound, only one that no loaded 2-core
machine should miss."""

FINISHES_WITHIN = 60.0
"""Seconds a re-run gets to finish the run (a step cut off is retried with Temporal's backoff)."""

WORKER_LINE = "a worker in this process runs the app"
"""What ``roost run --prod`` says on stderr when it starts, before anything else."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    started = TemporalDevServer(tmp_path_factory.mktemp("temporal-signals"))
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def env(server: TemporalDevServer, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's dev server, no project settings."""
    return clean_env(ROOST_RUNTIME="temporal", ROOST_TEMPORAL_ADDRESS=server.address,
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


def _signal(proc: subprocess.Popen[bytes], sig: int) -> tuple[int | None, float]:
    """Send ``sig`` to ``proc`` (by its pid) and wait for it to end by itself: its exit status (None
    if it did not end within ENDS_WITHIN seconds) and how long it took."""
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        return proc.wait(ENDS_WITHIN), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start


def _assert_stopped_quietly(code: int | None, took: float, sig: int, run_id: str, out: Path, err: Path) -> None:
    printed = f"stdout:\n{out.read_text()}\nstderr:\n{err.read_text()}"
    assert code is not None, f"still running {ENDS_WITHIN:.0f} s after {signal.Signals(sig).name}\n{printed}"
    assert code == 128 + sig, f"exit status {code} after {took:.1f} s\n{printed}"
    assert "Traceback" not in out.read_text() + err.read_text(), printed
    said = [line for line in err.read_text().splitlines() if not line.startswith(WORKER_LINE)]
    assert len(said) == 1, printed  # one line saying where the run is and how it goes on
    what = "stopped by SIGTERM" if sig == signal.SIGTERM else "interrupted"
    assert f"{what}; run {run_id} stays on Temporal" in said[0] and "roost serve" in said[0], printed


@SIGNALS
def test_run_waiting_for_an_approval(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    run_id = f"sig-approval-{sig.name.lower()}"
    app_file = write_app(tmp_path, name=f"temporal_signals_approval_{sig.name.lower()}", approval=True)
    waits = f"roost resolve {run_id} editor"  # the hint printed once the run waits (for its approval)
    running, out, err = _run(env, tmp_path, app_file, run_id, "run")
    try:
        wait_for(out, waits, running, timeout=60)
        code, took = _signal(running, sig)
    finally:
        stop(running, signal.SIGKILL)
    _assert_stopped_quietly(code, took, sig, run_id, out, err)

    # the same command attaches to the run and runs a worker for its app; approved, the run finishes
    again, again_out, again_err = _run(env, tmp_path, app_file, run_id, "again")
    try:
        wait_for(again_out, waits, again, timeout=FINISHES_WITHIN)
        resolved = roost(env, "resolve", run_id, "editor", "true", "--runtime", "temporal")
        assert resolved.exit_code == 0, resolved.output
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == OWLS, again_out.read_text()


@SIGNALS
def test_run_in_a_long_sync_step(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    """The step's thread cannot be stopped: the worker gives it its grace period, then the process
    exits without waiting for it (Temporal runs the step again on the next worker)."""
    run_id = f"sig-step-{sig.name.lower()}"
    started, gate = tmp_path / "started", tmp_path / "gate"
    app_file = tmp_path / "blocking.py"
    app_file.write_text(BLOCKING_APP.format(started=str(started), gate=str(gate),
                                            name=f"temporal_signals_step_{sig.name.lower()}"))
    running, out, err = _run(env, tmp_path, app_file, run_id, "run")
    try:
        _wait_until(started, running)
        code, took = _signal(running, sig)
    finally:
        stop(running, signal.SIGKILL)
    _assert_stopped_quietly(code, took, sig, run_id, out, err)

    gate.touch()
    again, again_out, again_err = _run(env, tmp_path, app_file, run_id, "again")
    try:
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == {"writer": {"text": "about owls"}}, again_out.read_text()
