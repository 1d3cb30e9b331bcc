"""Ctrl-C, SIGTERM and timeouts on the local runtime never lose a finished step, nor run one twice.

Real processes and real signals, each process signalled through its own ``Popen``. The app's one
sync step ('charge' of agent 'pay') appends ``start`` and ``done`` to a counter file outside the
journal, so the counter says how often it really ran. A step either sleeps (PAY_SECONDS) or
blocks until the test creates a release file (PAY_RELEASE), which lets a test start a resume
while the step is certainly still running. No timing is asserted: waits are generous bounds
that end by themselves.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_support import clean_env, spawn, stop, wait_for

PAY_APP = '''
import os
import time
from pathlib import Path

from pydantic import BaseModel
from roost import App, agent


class Order(BaseModel):
    amount: int


class Receipt(BaseModel):
    charged: int


def charge_card(amount: int) -> int:
    counter = Path(os.environ["PAY_COUNTER"])
    with counter.open("a") as f:
        f.write("start\\n")
    release = os.environ.get("PAY_RELEASE")
    if release:
        deadline = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        time.sleep(float(os.environ.get("PAY_SECONDS", "2")))
    with counter.open("a") as f:
        f.write("done\\n")
    return amount


async def pay(order: Order, ctx) -> Receipt:
    return Receipt(charged=await ctx.step("charge", charge_card, order.amount))


payer = agent("pay").contracts(input=Order, output=Receipt).engine(pay)
app = App([payer], name="payments")
'''

LIBRARY_SCRIPT = '''
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pay import Order, app  # noqa: E402

from roost.errors import RunTimeoutError  # noqa: E402

how, app.journal = sys.argv[1], sys.argv[2]
counter = Path(os.environ["PAY_COUNTER"])


async def close_mid_step() -> None:
    await app.start(Order(amount=5), run_id="r1")
    while "start" not in (counter.read_text() if counter.exists() else ""):
        await asyncio.sleep(0.02)
    await app.aclose()


if how == "timeout":
    try:
        app.run(Order(amount=5), run_id="r1", timeout=0.5)
    except RunTimeoutError:
        pass
elif how == "aclose":
    asyncio.run(close_mid_step())
else:  # the test sends SIGINT once the step runs
    import faulthandler
    import signal
    # Ctrl-C as in a terminal: started from a background job (a CI runner's), this process
    # inherits SIGINT ignored, and asyncio.run then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Should asyncio.run not return, the test's failure shows where every thread was.
    faulthandler.dump_traceback_later(40)
    try:
        asyncio.run(app.arun(Order(amount=5), run_id="r1"))
    except KeyboardInterrupt:
        pass
    faulthandler.cancel_dump_traceback_later()
print("stopped", flush=True)
'''

ENDS_WITHIN = 60.0
"""Seconds a stopped process gets to end by itself (it needs about the step's time): a liveness
bound no loaded machine should miss, not a speed assertion."""

STEP_FINISHES = "stopping: waiting for step 'charge' of agent 'pay' to finish"
FOLLOWING = "is being run by another process"


@pytest.fixture
def pay(tmp_path: Path) -> Path:
    path = tmp_path / "pay.py"
    path.write_text(PAY_APP)
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(PAY_COUNTER=str(tmp_path / "counter.txt"), **extra)


def _counted(tmp_path: Path) -> list[str]:
    counter = tmp_path / "counter.txt"
    return counter.read_text().split() if counter.exists() else []


def _until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = ENDS_WITHIN) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s (exit code {proc.poll()})"
        time.sleep(0.02)


def _run(env: dict[str, str], tmp_path: Path, pay: Path, out: str = "run.out") -> subprocess.Popen[bytes]:
    return spawn(env, tmp_path / out, tmp_path, "run", pay, "-i", '{"amount": 5}', "--run-id", "r1",
                 "--journal", tmp_path / "j.db")


def _resume(env: dict[str, str], tmp_path: Path, out: str = "resume.out") -> subprocess.Popen[bytes]:
    return spawn(env, tmp_path / out, tmp_path, "runs", "resume", "r1", "--journal", tmp_path / "j.db")


def _resumed_to_the_end(tmp_path: Path, resume: subprocess.Popen[bytes], out: str = "resume.out") -> None:
    assert resume.wait(ENDS_WITHIN) == 0, (tmp_path / out).read_text()
    printed = (tmp_path / out).read_text()
    assert "run r1 completed" in printed and '"charged": 5' in printed, printed


def test_ctrl_c_waits_for_the_sync_step_records_it_and_a_resume_never_runs_it_again(tmp_path: Path,
                                                                                     pay: Path) -> None:
    """The first Ctrl-C names the step it waits for; the process ends by itself with 130 once the
    step has finished, saying it is recorded and how to resume. A resume started meanwhile (the
    step still running there) follows the run and finishes it without running the step again."""
    release = tmp_path / "release"
    env = _env(tmp_path, PAY_RELEASE=str(release))
    run = _run(env, tmp_path, pay)
    resume: subprocess.Popen[bytes] | None = None
    try:
        _until(lambda: _counted(tmp_path) == ["start"], "the step started", run)
        run.send_signal(signal.SIGINT)
        wait_for(tmp_path / "run.out", STEP_FINISHES, run, ENDS_WITHIN)
        resume = _resume(env, tmp_path)
        _until(lambda: FOLLOWING in (tmp_path / "resume.out").read_text() or _counted(tmp_path).count("start") > 1,
               "the resume followed the run (or ran the step)", resume)
        release.touch()
        assert run.wait(ENDS_WITHIN) == 130
        assert _counted(tmp_path) == ["start", "done"]  # it ended after the step had finished
        printed = (tmp_path / "run.out").read_text()
        assert "step 'charge' of agent 'pay' finished and is recorded" in printed, printed
        assert f"continue it with roost runs resume r1 --journal {tmp_path / 'j.db'}" in printed, printed
        assert "Traceback" not in printed, printed
        _resumed_to_the_end(tmp_path, resume)
    finally:
        release.touch()
        stop(run)
        if resume is not None:
            stop(resume)
    assert _counted(tmp_path) == ["start", "done"], "the step ran again"


def test_sigterm_waits_for_the_sync_step_and_exits_143(tmp_path: Path, pay: Path) -> None:
    env = _env(tmp_path, PAY_SECONDS="2")
    run = _run(env, tmp_path, pay)
    try:
        _until(lambda: _counted(tmp_path) == ["start"], "the step started", run)
        run.send_signal(signal.SIGTERM)
        assert run.wait(ENDS_WITHIN) == 143
    finally:
        stop(run)
    assert _counted(tmp_path) == ["start", "done"]
    printed = (tmp_path / "run.out").read_text()
    assert STEP_FINISHES in printed and "stopped by SIGTERM" in printed, printed
    assert "step 'charge' of agent 'pay' finished and is recorded" in printed, printed
    resume = _resume(env, tmp_path)
    try:
        _resumed_to_the_end(tmp_path, resume)
    finally:
        stop(resume)
    assert _counted(tmp_path) == ["start", "done"], "the step ran again"


def test_a_second_ctrl_c_stops_at_once_and_says_the_step_runs_again(tmp_path: Path, pay: Path) -> None:
    """The step would run for minutes: the second Ctrl-C ends the process long before, saying
    the step is not recorded; the resume runs it again (at least once)."""
    run = _run(_env(tmp_path, PAY_SECONDS="600", ROOST_STOP_GRACE="600"), tmp_path, pay)
    try:
        _until(lambda: _counted(tmp_path) == ["start"], "the step started", run)
        run.send_signal(signal.SIGINT)
        wait_for(tmp_path / "run.out", STEP_FINISHES, run, ENDS_WITHIN)
        run.send_signal(signal.SIGINT)
        assert run.wait(ENDS_WITHIN) == 130
    finally:
        stop(run)
    printed = (tmp_path / "run.out").read_text()
    assert "stopped at once; step 'charge' of agent 'pay' was still running and is not recorded: it runs again " \
           "when the run resumes" in printed, printed
    assert f"roost runs resume r1 --journal {tmp_path / 'j.db'}" in printed and "Traceback" not in printed, printed
    assert _counted(tmp_path) == ["start"]
    resume = _resume(_env(tmp_path, PAY_SECONDS="0"), tmp_path)
    try:
        _resumed_to_the_end(tmp_path, resume)
    finally:
        stop(resume)
    assert _counted(tmp_path) == ["start", "start", "done"]


@pytest.mark.parametrize("how", ["timeout", "aclose", "keyboard_interrupt"])
def test_a_library_caller_that_stops_mid_step_never_loses_it(tmp_path: Path, pay: Path, how: str) -> None:
    """``app.run(timeout=0.5)``, ``app.aclose()`` and ``asyncio.run`` cut by Ctrl-C while a sync step
    runs, then the script exits normally: the step finishes in its thread and is journaled, and
    its run stays the script's until then, so a resume started meanwhile waits for it and never
    runs the step again."""
    release = tmp_path / "release"
    env = _env(tmp_path, PAY_RELEASE=str(release))
    (tmp_path / "script.py").write_text(LIBRARY_SCRIPT)
    with (tmp_path / "script.out").open("wb") as sink:
        script = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), how, str(tmp_path / "j.db")],
                                  stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    resume: subprocess.Popen[bytes] | None = None
    try:
        _until(lambda: _counted(tmp_path) == ["start"], "the step started", script)
        if how == "keyboard_interrupt":
            script.send_signal(signal.SIGINT)
        wait_for(tmp_path / "script.out", "stopped", script, ENDS_WITHIN)
        resume = _resume(env, tmp_path)
        _until(lambda: FOLLOWING in (tmp_path / "resume.out").read_text() or _counted(tmp_path).count("start") > 1,
               "the resume followed the run (or ran the step)", resume)
        release.touch()
        assert script.wait(ENDS_WITHIN) == 0, (tmp_path / "script.out").read_text()
        _resumed_to_the_end(tmp_path, resume)
    finally:
        release.touch()
        stop(script)
        if resume is not None:
            stop(resume)
    assert _counted(tmp_path) == ["start", "done"], "the step ran again"
