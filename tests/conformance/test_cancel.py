"""Cancelling a run, the same on every runtime (``app.acancel`` / ``handle.cancel``).

After a cancel: nothing new starts, waits (promises, timers) are dropped, an async step is
cancelled, a sync step already running finishes and is recorded, and the run ends ``cancelled``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from roost import DurableContext, agent
from roost.errors import CancelError, RunNotFoundError

from .conftest import MakeApp
from .models import Done, Draft, Idea

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOUND = 60.0  # seconds: a liveness bound only (a cancelled run ends long before)


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_cancel_a_waiting_run(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    ran: list[str] = []

    async def wait(i: Idea, ctx: DurableContext) -> Draft:
        await ctx.step("before", ran.append, "before")
        value = await ctx.promise("go")
        await ctx.step("after", ran.append, "after")
        return Draft(title="t", body=str(value))

    async def nap(i: Idea, ctx: DurableContext) -> Done:
        await ctx.sleep(3600)
        await ctx.step("woke", ran.append, "woke")
        return Done(value="late")

    def downstream(d: Draft) -> Done:
        ran.append("downstream")
        return Done(value=d.body)

    w = agent("w").contracts(input=Idea, output=Draft).engine(wait)
    n = agent("n").contracts(input=Idea, output=Done).engine(nap)
    d = agent("d").contracts(input=Draft, output=Done).engine(downstream).reacts_to(w)
    app = make_app([w, n, d])
    handle = await app.start(Idea(topic="x"), run_id=uid("cancel-wait"))
    assert await handle.approval(timeout=BOUND) == "go"
    await app.acancel(handle.run_id, reason="not needed")
    result = await handle.result(timeout=BOUND)
    assert result.status == "cancelled"
    assert ran == ["before"], "nothing new starts after a cancel, and its waits are dropped"
    await app.acancel(handle.run_id)  # cancelling a cancelled run does nothing
    record = await handle.record()
    assert record.status == "cancelled" and not record.waiting_on


async def test_cancel_stops_an_async_step(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def slow() -> str:
        started.set()
        await asyncio.sleep(3600)
        finished.append("slow")
        return "never"

    async def work(i: Idea, ctx: DurableContext) -> Done:
        value = await ctx.step("slow", slow)
        finished.append("agent")
        return Done(value=value)

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(work)])
    handle = await app.start(Idea(topic="x"), run_id=uid("cancel-async"))
    await asyncio.wait_for(started.wait(), BOUND)
    await handle.cancel()
    result = await handle.result(timeout=BOUND)
    assert result.status == "cancelled"
    assert finished == [], "the async step was cancelled, and the agent's code did not go on"


async def test_cancel_lets_a_sync_step_finish_and_records_it(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    inside = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocking() -> str:
        inside.set()
        release.wait(BOUND)
        ran.append("blocking")
        return "done-anyway"

    async def work(i: Idea, ctx: DurableContext) -> Done:
        value = await ctx.step("blocking", blocking)
        await ctx.step("next", ran.append, "next")
        return Done(value=value)

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(work)])
    handle = await app.start(Idea(topic="x"), run_id=uid("cancel-sync"))
    await _until(inside.is_set, "the sync step to start")
    await app.acancel(handle.run_id)
    await asyncio.sleep(0.3)
    release.set()
    result = await handle.result(timeout=BOUND)
    assert result.status == "cancelled"
    assert ran == ["blocking"], "the sync step ran to its end; nothing after it started"
    steps = [s for a in (await handle.record()).activations for s in a.steps if s.name == "blocking"]
    assert [(s.status, s.value) for s in steps] == [("done", "done-anyway")], steps


async def test_cancel_a_finished_or_unknown_run(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(lambda i: Done(value=i.topic))])
    result = await app.arun(Idea(topic="x"), run_id=uid("cancel-done"))
    assert result.status == "completed"
    with pytest.raises(CancelError, match="completed"):
        await app.acancel(result.run_id)
    with pytest.raises(RunNotFoundError):
        await app.acancel(uid("no-such-run"))
