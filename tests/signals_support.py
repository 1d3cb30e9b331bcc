"""``roost run --prod`` stopped by Ctrl-C (SIGINT) or SIGTERM on a prod runtime: the checks that
tests/integration/test_cli_restate_signals.py and test_cli_temporal_signals.py share, each
module giving its runtime's :class:`Stopping` and an ``env`` of commands on its server.

The process must end by itself, with one line on stderr saying where the run is, no traceback
and exit status 128 + the signal, whatever the run was doing in it (waiting for an approval, or
running a sync step in a thread); the run stays on the runtime and finishes once its app is
served again (here by the same command, which attaches to the run). Each process is signalled by
its own pid, once the run is in flight there; every wait is bounded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_support import OWLS, outputs_of, roost, stop, wait_for, write_app

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])

FINISHES_WITHIN = 60.0
"""Seconds a resumed run gets to finish (the runtime retries what was cut off, with backoff)."""

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


@dataclass(frozen=True)
class Stopping:
    """How ``roost run --prod`` on one runtime stops."""

    runtime: str
    """``--runtime`` of ``roost resolve``."""
    app_prefix: str
    """Of the names of the apps the tests write (each test's app has a name of its own)."""
    ends_within: float
    """Seconds a signalled process gets to end by itself: not a speed bound, only one that no
    loaded 2-core machine should miss."""
    says: Callable[[signal.Signals, str], str]
    """What its one line on stderr says, for the signal and the run id."""
    aside: str | None = None
    """Lines on stderr that start with this are not that line (what the process said when it started)."""


def run_prod(env: dict[str, str], tmp_path: Path, app_file: Path, run_id: str,
             tag: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``roost run APP --prod`` on the owls input, in a subprocess; its stdout and stderr files."""
    out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "roost.cli", "run", str(app_file), "--prod",
                                 "--input", '{"title": "owls"}', "--run-id", run_id],
                                stdout=stdout, stderr=stderr, env=env, cwd=tmp_path)
    return proc, out, err


def wait_until_exists(condition: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the file ``condition`` exists; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before {condition.name} appeared"
        assert time.monotonic() < deadline, f"{condition.name} did not appear within {timeout:.0f} s"
        time.sleep(0.05)


def signal_and_wait(proc: subprocess.Popen[bytes], sig: int, within: float) -> tuple[int | None, float]:
    """Send ``sig`` to ``proc`` (by its pid) and wait for it to end by itself: its exit status (None
    if it did not end within ``within`` seconds) and how long it took."""
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        return proc.wait(within), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start


def assert_stopped_quietly(how: Stopping, code: int | None, took: float, sig: signal.Signals, run_id: str,
                           out: Path, err: Path) -> None:
    printed = f"stdout:\n{out.read_text()}\nstderr:\n{err.read_text()}"
    assert code is not None, f"still running {how.ends_within:.0f} s after {sig.name}\n{printed}"
    assert code == 128 + sig, f"exit status {code} after {took:.1f} s\n{printed}"
    assert "Traceback" not in out.read_text() + err.read_text(), printed
    said = [line for line in err.read_text().splitlines() if how.aside is None or not line.startswith(how.aside)]
    assert len(said) == 1, printed  # one line saying where the run is and how it goes on
    assert how.says(sig, run_id) in said[0] and "roost serve" in said[0], printed


def check_run_waiting_for_an_approval(how: Stopping, sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    run_id = f"sig-approval-{sig.name.lower()}"
    app_file = write_app(tmp_path, name=f"{how.app_prefix}signals_approval_{sig.name.lower()}", approval=True)
    waits = f"roost resolve {run_id} editor"  # the hint printed once the run waits (for its approval)
    running, out, err = run_prod(env, tmp_path, app_file, run_id, "run")
    try:
        wait_for(out, waits, running, timeout=60)
        code, took = signal_and_wait(running, sig, how.ends_within)
    finally:
        stop(running, signal.SIGKILL)
    assert_stopped_quietly(how, code, took, sig, run_id, out, err)

    # the same command attaches to the run and serves its app; approved, the run finishes
    again, again_out, again_err = run_prod(env, tmp_path, app_file, run_id, "again")
    try:
        wait_for(again_out, waits, again, timeout=FINISHES_WITHIN)
        resolved = roost(env, "resolve", run_id, "editor", "true", "--runtime", how.runtime)
        assert resolved.exit_code == 0, resolved.output
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == OWLS, again_out.read_text()


def check_run_in_a_long_sync_step(how: Stopping, sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    run_id = f"sig-step-{sig.name.lower()}"
    started, gate = tmp_path / "started", tmp_path / "gate"
    app_file = tmp_path / "blocking.py"
    app_file.write_text(BLOCKING_APP.format(started=str(started), gate=str(gate),
                                            name=f"{how.app_prefix}signals_step_{sig.name.lower()}"))
    running, out, err = run_prod(env, tmp_path, app_file, run_id, "run")
    try:
        wait_until_exists(started, running)
        code, took = signal_and_wait(running, sig, how.ends_within)
    finally:
        stop(running, signal.SIGKILL)
    assert_stopped_quietly(how, code, took, sig, run_id, out, err)

    gate.touch()
    again, again_out, again_err = run_prod(env, tmp_path, app_file, run_id, "again")
    try:
        assert again.wait(FINISHES_WITHIN) == 0, again_out.read_text() + again_err.read_text()
    finally:
        stop(again, signal.SIGKILL)
    assert outputs_of(again_out.read_text()) == {"writer": {"text": "about owls"}}, again_out.read_text()
