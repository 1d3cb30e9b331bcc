"""A long run goes on as it started: many steps, timers, promises, calls, sends, keyed state and
parallel branches in one run, each step's function called exactly once.

On ``temporal-continue`` the run continues as new every few dozen history events (see
conftest.CONTINUE_EVERY), in the middle of all of this: activations in flight are started again
in the new workflow run and replay what their ``ctx`` calls returned. The test also checks, in
Temporal's own records, that the run did continue as new several times.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from roost import DurableContext, agent

from .conftest import MakeApp
from .models import Count, Done, Idea

pytestmark = pytest.mark.asyncio(loop_scope="session")

STEPS = 30


async def test_a_long_run_with_every_kind_of_call(make_app: MakeApp, runtime_name: str, uid: Callable[[str], str],
                                                   temporal_server: Callable[[], Any]) -> None:
    calls: Counter[str] = Counter()

    def tick(tag: str, i: int) -> int:
        calls[f"{tag}{i}"] += 1
        return i

    async def branch(tag: str, ctx: DurableContext) -> int:
        total = 0
        for i in range(STEPS // 3):
            total += await ctx.step("tick", tick, tag, i)
        return total

    async def loop(idea: Idea, ctx: DurableContext) -> Done:
        total = 0
        for i in range(STEPS):
            total += await ctx.step("tick", tick, "main", i)
            if i % 10 == 5:
                await ctx.sleep(0.05)
        a, b = await asyncio.gather(branch("a", ctx), branch("b", ctx))
        doubled = await ctx.call("double", Count(n=total))
        await ctx.send("tally", Count(n=doubled.n))
        word = await ctx.promise("word")
        at = await ctx.now()
        await ctx.step("after", tick, "after", 0)
        return Done(value=f"{total}/{a}/{b}/{doubled.n}/{word}/{at.year > 2000}")

    async def double(c: Count, ctx: DurableContext) -> Count:
        await ctx.step("tick", tick, "double", c.n)
        return Count(n=c.n * 2)

    async def tally(c: Count, ctx: DurableContext) -> Done:
        n = await ctx.state.get("n", 0) + c.n
        ctx.state.set("n", n)
        await ctx.step("tick", tick, "tally", n)
        return Done(value=str(n))

    key = uid("key")  # keyed state lives across runs: one entity per test
    main = agent("main").contracts(input=Idea, output=Done).engine(loop)
    dbl = agent("double").contracts(input=Count, output=Count).engine(double)
    tal = agent("tally").contracts(input=Count, output=Done).engine(tally).keyed_by(lambda c: key)
    app = make_app([main, dbl, tal])
    handle = await app.start(Idea(topic="long"), run_id=uid("long"))
    # On temporal-continue this blocking wait is cut short by each continue-as-new and asked again.
    assert await handle.approval(timeout=90) == "word"
    await app.aresolve(handle.run_id, "word", "done")
    result = await handle.result(timeout=120)

    total = sum(range(STEPS))
    half = sum(range(STEPS // 3))
    assert result.status == "completed", result.error
    assert result["main"].value == f"{total}/{half}/{half}/{2 * total}/done/True"
    assert result["tally"].value == str(2 * total)
    expected = {f"main{i}" for i in range(STEPS)} | {f"{t}{i}" for t in "ab" for i in range(STEPS // 3)}
    expected |= {f"double{total}", f"tally{2 * total}", "after0"}
    assert set(calls) == expected
    assert all(n == 1 for n in calls.values()), {k: n for k, n in calls.items() if n != 1}

    if runtime_name == "temporal-continue":
        from temporalio.client import Client, WorkflowExecutionStatus

        client = await Client.connect(temporal_server().address)
        statuses = [wf.status async for wf in client.list_workflows(f"WorkflowId = '{handle.run_id}'")]
        continued = statuses.count(WorkflowExecutionStatus.CONTINUED_AS_NEW)
        assert continued >= 3, f"the run continued as new {continued} times: {statuses}"
        assert statuses.count(WorkflowExecutionStatus.COMPLETED) == 1
