"""Never a silent stop, for cancel: faults injected at each point of a cancel's life (embedded runtime).

A run waits on a promise, runs an async step and sleeps, when it is cancelled, by this runtime or
by another on the same journal (whose request the runtime that runs it picks up through the
journal), or after the process that ran it stopped. At each point of the cancel's life a fault
is injected: a journal write that fails (disk full, for good or once), an exception in roost's own
code (a bug). Points: recording the request, the watcher picking it up, the engine applying it,
journaling the cancel event, cancelling the async step, journaling the activations' cancelled
outcome, the run's end record, and taking over a run no process runs (with the app's code, or
without it).

For every point: the cancel call returns or raises a typed roost error; whoever waits on the run
gets its end (cancelled, or RunFailedError naming the run and the cause), never an endless wait;
and once the fault is gone, the run ends ``cancelled`` by itself (a cancel that was recorded is
carried out) -- never left ``running`` with nobody working on it -- and nothing new started after
the cancel (no step ran again, the async step was not restarted).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from roost import App, DurableContext, RunHandle, agent
from roost._engine import CancelRequested, RunEngine
from roost.errors import RoostError, RunFailedError
from roost.runtime.local import LocalRuntime
from roost.runtime.local import _runtime as local_runtime
from roost.runtime.local._journal import Committer, Journal

BOUND = 30.0  # seconds: a liveness bound only (every run here ends long before)
RUN = "r"


class N(BaseModel):
    n: int


class Injected(RuntimeError):
    """The bug these tests inject into roost's own code."""


def build(path: Path, counts: Counter[str], *, name: str = "cancelme") -> App:
    """Three entry agents: one waits on a promise, one runs an async step that waits for ever,
    one sleeps an hour. ``counts`` (outside the journal) counts what each step ran."""

    def bump(tag: str) -> str:
        counts[tag] += 1
        return tag

    async def slow() -> str:
        counts["slow"] += 1
        await asyncio.sleep(3600)
        return "never"

    async def waiter(x: N, ctx: DurableContext) -> N:
        await ctx.step("before", bump, "before")
        await ctx.promise("go")
        await ctx.step("after", bump, "after")
        return x

    async def stepper(x: N, ctx: DurableContext) -> N:
        await ctx.step("slow", slow)
        await ctx.step("after-slow", bump, "after-slow")
        return x

    async def napper(x: N, ctx: DurableContext) -> N:
        await ctx.sleep(3600)
        await ctx.step("woke", bump, "woke")
        return x

    w = agent("w").contracts(input=N, output=N).engine(waiter)
    s = agent("s").contracts(input=N, output=N).engine(stepper)
    z = agent("z").contracts(input=N, output=N).engine(napper)
    return App([w, s, z], name=name, journal=path, entry=[w, s, z])


async def until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND} s: {what}"
        await asyncio.sleep(0.02)


def row(path: Path) -> tuple[str, str | None]:
    """(status, error) of the run in the journal, read as another process would."""
    with closing(sqlite3.connect(path, timeout=10.0)) as db:
        found = db.execute("SELECT status, error FROM runs WHERE run_id=?", (RUN,)).fetchone()
    assert found is not None
    return str(found[0]), found[1]


def activation_statuses(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path, timeout=10.0)) as db:
        return {str(a): str(s) for a, s in db.execute("SELECT id, status FROM messages WHERE run_id=?", (RUN,))}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Committer, "RETRIES", (0.001, 0.002))
    yield


# -- faults ----------------------------------------------------------------------------------------


class Fault:
    """A fault raised by ``target.name`` on the calls ``matches`` picks, while ``active``: on
    every such call (``once=False``) or on the first one only."""

    def __init__(self, mp: pytest.MonkeyPatch, target: Any, name: str, make: Callable[[], BaseException], *,
                 matches: Callable[..., bool] = lambda *a, **k: True, once: bool = False,
                 static: bool = True, after: bool = False) -> None:
        self.active, self.hits = True, 0
        original = getattr(target, name)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if not (self.active and matches(*args, **kwargs)):
                return original(*args, **kwargs)
            self.hits += 1
            if once:
                self.active = False
            if after:  # the call itself happens; the fault comes right after it
                original(*args, **kwargs)
            raise make()

        mp.setattr(target, name, staticmethod(faulty) if static else faulty)


def disk_full() -> BaseException:
    return sqlite3.OperationalError("database or disk is full")


def bug() -> BaseException:
    return Injected("injected bug")


KINDS: dict[str, tuple[Callable[[], BaseException], bool]] = {
    "disk-full": (disk_full, False),  # for every write of that point, until the test clears it
    "disk-full-once": (disk_full, True),  # retried by the group commit: never noticed
    "bug": (bug, False),
}


def is_cancel_event(db: Any, run_id: str, seq: int, event: dict[str, Any]) -> bool:
    return event.get("t") == "cancel"


def cancelled_status(*args: Any, **kwargs: Any) -> bool:
    return kwargs.get("status", args[3] if len(args) > 3 else None) == "cancelled"


# point -> (target, attribute, which calls, is a static method of a journal op)
POINTS: dict[str, tuple[Any, str, Callable[..., bool], bool]] = {
    "request": (Journal, "request_cancel", lambda *a, **k: True, True),
    "cancel-event": (Journal, "append_event", is_cancel_event, True),
    "outcome": (Journal, "update_activation", cancelled_status, True),
    "end-record": (Journal, "update_run", cancelled_status, True),
    # roost's own code: the engine applying the cancel, the runtime stopping what was in flight
    "engine": (RunEngine, "handle", lambda engine, event: isinstance(event, CancelRequested), False),
    "abort": (local_runtime.LocalRuntime, "_abort", lambda *a: True, False),
}


# -- the scenario ----------------------------------------------------------------------------------


async def started(app: App, counts: Counter[str]) -> None:
    handle = await app.start(N(n=0), run_id=RUN)
    assert await handle.approval(timeout=BOUND) == "go"
    await until(lambda: counts["slow"] == 1, "the async step to start")


async def cancel_from(how: str, app: App, path: Path) -> RoostError | None:
    """Cancel the run (this runtime, or another one on the journal); the typed error it raised."""
    try:
        if how == "here":
            await app.acancel(RUN, reason="not needed")
        else:  # another runtime: it records the request; the runtime that runs the run carries it out
            async with LocalRuntime(path, resume=False) as other:
                await other.cancel(RUN, "not needed")
    except RoostError as exc:
        return exc
    return None


async def waited_end(app: App, cause: str) -> str:
    """What a caller waiting on the run gets: its end, never an endless wait."""
    try:
        result = await RunHandle(app, await app.runtime(), RUN).result(BOUND)
    except RunFailedError as exc:
        assert exc.run_id == RUN, exc
        assert cause in f"{exc.error_type}: {exc.error_message}", exc
        return "failed"
    return result.status


async def ends_cancelled(app: App, path: Path, counts: Counter[str], before: Counter[str]) -> None:
    """The fault is gone: the run ends cancelled by itself, and nothing new started after the cancel."""
    await until(lambda: row(path)[0] != "running", "the run to end once the fault is gone")
    assert row(path)[0] == "cancelled", row(path)
    record = await (await app.runtime()).wait(RUN, BOUND)
    assert record.status == "cancelled"
    assert set(activation_statuses(path).values()) == {"cancelled"}, activation_statuses(path)
    assert counts == before, f"something started after the cancel: {counts} (before: {before})"


LIVE_CASES = [(point, kind) for point, (target, *_) in POINTS.items() if target is Journal for kind in KINDS]
LIVE_CASES += [("engine", "bug"), ("abort", "bug")]


@pytest.mark.parametrize("how", ["here", "other"])
@pytest.mark.parametrize(("point", "kind"), LIVE_CASES)
async def test_fault_while_cancelling_a_live_run(tmp_path: Path, point: str, kind: str, how: str) -> None:
    path, counts = tmp_path / "j.db", Counter[str]()
    app = build(path, counts)
    try:
        await started(app, counts)
        before = Counter(counts)
        make, once = KINDS[kind]
        target, name, matches, static = POINTS[point]
        with pytest.MonkeyPatch.context() as mp:
            fault = Fault(mp, target, name, make, matches=matches, once=once, static=static)
            error = await cancel_from(how, app, path)
            if error is not None:  # the request could not be recorded: the run goes on, as it was
                assert point == "request" and not once, error
                assert RUN in str(error) and str(make()) in str(error), error
                assert (await (await app.runtime()).get(RUN)).status == "waiting"
            else:
                end = await waited_end(app, str(make()))
                assert end in ("cancelled", "failed"), end
                assert end == "cancelled" or not once, f"a fault retried away still failed the run: {end}"
            assert fault.hits >= 1, "the fault was never reached"
        if error is not None:
            assert await cancel_from(how, app, path) is None  # asked again, once the fault is gone
        await ends_cancelled(app, path, counts, before)
    finally:
        await app.aclose()


async def test_the_watcher_failing_to_read_requests_looks_again(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Another process asked (the request is durable); the runtime that runs the run cannot read
    the requests for a while: the run visibly goes on waiting on its promise, a warning is logged
    at each look, and the cancel is carried out once the journal can be read."""
    path, counts = tmp_path / "j.db", Counter[str]()
    app = build(path, counts)
    try:
        await started(app, counts)
        before = Counter(counts)
        with pytest.MonkeyPatch.context() as mp:
            fault = Fault(mp, Journal, "cancel_requests", lambda: sqlite3.OperationalError("disk I/O error"),
                          static=False)
            assert await cancel_from("other", app, path) is None
            await until(lambda: fault.hits >= 3, "the watcher to look three times")
            record = await (await app.runtime()).get(RUN)
            assert record.status == "waiting" and record.waiting_on == ["go"], record
            assert "looking for cancel requests failed" in caplog.text
        await ends_cancelled(app, path, counts, before)
    finally:
        await app.aclose()


async def test_an_async_step_that_turns_its_cancellation_into_an_error(tmp_path: Path) -> None:
    """User code that answers the cancellation with another exception: no new attempt starts
    (the retry waits on a run that is ending), the run ends cancelled."""
    path, counts, inside = tmp_path / "j.db", Counter[str](), asyncio.Event()

    async def stubborn() -> str:
        counts["attempt"] += 1
        inside.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("cleanup failed") from None
        return "never"

    async def work(x: N, ctx: DurableContext) -> N:
        await ctx.step("stubborn", stubborn)
        counts["after"] += 1
        return x

    app = App([agent("a").contracts(input=N, output=N).engine(work)], journal=path)
    try:
        handle = await app.start(N(n=0), run_id=RUN)
        await asyncio.wait_for(inside.wait(), BOUND)
        await handle.cancel()
        assert (await handle.result(BOUND)).status == "cancelled"
        assert counts == Counter(attempt=1), counts
    finally:
        await app.aclose()


# -- a run no process runs -----------------------------------------------------------------------------


UNOWNED_POINTS: dict[str, tuple[Any, str, Callable[..., bool], bool]] = {
    "claim": (local_runtime, "claim_run", lambda *a: True, False),  # taking the run over, with its code
    "cancel-event": POINTS["cancel-event"],
    "outcome": POINTS["outcome"],
    "end-record": POINTS["end-record"],
    "unowned": (Journal, "cancel_unowned", lambda *a: True, True),  # ending it without its code
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("point", list(UNOWNED_POINTS))
async def test_fault_while_cancelling_a_run_no_process_runs(tmp_path: Path, point: str, kind: str) -> None:
    """The process that ran it stopped (its runs went back); ``roost runs cancel`` does what this
    does: a runtime that takes the run over with the app's code and cancels it, or, without the
    code, ends it cancelled at once."""
    path, counts = tmp_path / "j.db", Counter[str]()
    app = build(path, counts)
    try:
        await started(app, counts)
    finally:
        await app.aclose()  # the run stays unfinished, no process runs it
    before = Counter(counts)
    assert row(path)[0] == "running"
    with_code = point != "unowned"
    make, once = KINDS[kind]
    target, name, matches, static = UNOWNED_POINTS[point]
    async with LocalRuntime(path, resume=False) as rt:
        if with_code:
            rt.register(app.compiled, app.app_ref)
        with pytest.MonkeyPatch.context() as mp:
            fault = Fault(mp, target, name, make, matches=matches, once=once, static=static)
            error: RoostError | None = None
            try:
                await rt.cancel(RUN, "not needed")
            except RoostError as exc:
                error = exc
            if error is not None:  # typed, naming the run and the cause
                assert not once, error
                assert RUN in str(error) or getattr(error, "run_id", None) == RUN, error
                assert str(make()) in str(error) or str(make()) in str(error.__cause__), error
            else:
                try:
                    status = (await rt.wait(RUN, BOUND)).status
                except RunFailedError as exc:
                    assert exc.run_id == RUN and str(make()) in exc.error_message, exc
                    status = "failed"
                assert status == "cancelled" or (status == "failed" and not once), status
            assert fault.hits >= 1, "the fault was never reached"
        if error is not None:
            await rt.cancel(RUN, "not needed")  # asked again, once the fault is gone
        await until(lambda: row(path)[0] != "running", "the run to end once the fault is gone")
        assert row(path)[0] == "cancelled", row(path)
        assert (await rt.wait(RUN, BOUND)).status == "cancelled"
    assert set(activation_statuses(path).values()) == {"cancelled"}, activation_statuses(path)
    assert counts == before, f"something started after the cancel: {counts} (before: {before})"
