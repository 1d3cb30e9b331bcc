"""What a run is, as the run engine defines it: gathers per batch, calls that fail, refused
cycles, failures from outside user code. Every runtime on the run engine must pass these."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roost import DurableContext, agent
from roost.errors import RunFailedError

from .conftest import MakeApp
from .models import Count, Done, Idea, Item

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = [pytest.mark.engine_semantics, pytest.mark.asyncio(loop_scope="session")]


def _numbers(i: Idea) -> list[Count]:
    return [Count(n=int(c)) for c in i.topic]


async def test_each_batch_is_gathered_on_its_own_in_source_order(make_app: MakeApp) -> None:
    """One list-producing agent runs twice in a run (it reacts to two agents): the two batches
    are gathered apart, each complete and in its source's order, whatever order items finish in."""

    async def work(c: Count) -> Count:
        await asyncio.sleep(0.01 * ((7 * c.n) % 5))  # items finish out of order
        return Count(n=c.n * 10)

    a = agent("a").contracts(input=Idea, output=Idea).engine(lambda i: Idea(topic="123"))
    b = agent("b").contracts(input=Idea, output=Idea).engine(lambda i: Idea(topic="4567"))
    lister = agent("lister").contracts(input=Idea, output=list[Count]).engine(_numbers)
    lister.reacts_to(a)
    lister.reacts_to(b)
    worker = agent("worker").contracts(input=Count, output=Count).engine(work).reacts_to(lister, each=True)
    gather = agent("gather").contracts(input=list[Count], output=Done)
    gather.engine(lambda cs: Done(value=",".join(str(c.n) for c in cs))).reacts_to(worker)
    app = make_app([a, b, lister, worker, gather], entry=[a, b])
    result = await app.arun(Idea(topic="x"))
    assert sorted(d.value for d in result.all("gather")) == ["10,20,30", "40,50,60,70"]


async def test_an_empty_batch_gathers_once_with_an_empty_list(make_app: MakeApp) -> None:
    split = agent("split").contracts(input=Idea, output=list[Item]).engine(lambda i: [])
    worker = agent("worker").contracts(input=Item, output=Done).engine(lambda i: Done(value=i.name))
    worker.reacts_to(split, each=True)
    join = agent("join").contracts(input=list[Done], output=Count).engine(lambda ds: Count(n=len(ds)))
    join.reacts_to(worker)
    app = make_app([split, worker, join])
    result = await app.arun(Idea(topic="x"))
    assert result["join"] == Count(n=0)
    assert "worker" not in result


async def test_items_dropped_on_the_way_count_as_done(make_app: MakeApp) -> None:
    """A when= filter between the fan-out and the gather (not on the gather's own edge) drops
    items; the gather still runs, once, with the items that got through."""
    split = agent("split").contracts(input=Idea, output=list[Count]).engine(_numbers)
    worker = agent("worker").contracts(input=Count, output=Count).engine(lambda c: c).reacts_to(split, each=True)
    odd = agent("odd").contracts(input=Count, output=Count).engine(lambda c: Count(n=c.n + 100))
    odd.reacts_to(worker, when=lambda c: c.n % 2 == 1)
    total = agent("total").contracts(input=list[Count], output=Done)
    total.engine(lambda cs: Done(value=",".join(str(c.n) for c in cs))).reacts_to(odd)
    app = make_app([split, worker, odd, total])
    assert (await app.arun(Idea(topic="123456")))["total"] == Done(value="101,103,105")
    assert (await app.arun(Idea(topic="2468")))["total"] == Done(value="")


async def test_nested_batches_gather_per_level(make_app: MakeApp) -> None:
    outer = agent("outer").contracts(input=Idea, output=list[Idea])
    outer.engine(lambda i: [Idea(topic=t) for t in i.topic.split("-")])
    inner = agent("inner").contracts(input=Idea, output=list[Count]).engine(_numbers).reacts_to(outer, each=True)
    sq = agent("sq").contracts(input=Count, output=Count).engine(lambda c: Count(n=c.n * c.n))
    sq.reacts_to(inner, each=True)
    per = agent("per").contracts(input=list[Count], output=Count).engine(lambda cs: Count(n=sum(c.n for c in cs)))
    per.reacts_to(sq)
    allsum = agent("allsum").contracts(input=list[Count], output=Done)
    allsum.engine(lambda cs: Done(value=",".join(str(c.n) for c in cs))).reacts_to(per)
    app = make_app([outer, inner, sq, per, allsum])
    result = await app.arun(Idea(topic="12-3--45"))
    assert result["allsum"] == Done(value="5,9,0,41")


async def test_a_list_output_over_a_plain_edge_arrives_whole(make_app: MakeApp) -> None:
    src = agent("src").contracts(input=Idea, output=list[Count]).engine(_numbers)
    dst = agent("dst").contracts(input=list[Count], output=Count).engine(lambda cs: Count(n=len(cs))).reacts_to(src)
    app = make_app([src, dst])
    assert (await app.arun(Idea(topic="9876")))["dst"] == Count(n=4)


async def test_a_call_to_a_rejected_callee_raises_in_the_caller(make_app: MakeApp) -> None:
    async def boss(i: Idea, ctx: DurableContext) -> Done:
        try:
            await ctx.call("checker", Count(n=1))
        except Exception as exc:
            return Done(value=f"{type(exc).__name__}:{getattr(exc, 'status', '?')}")
        return Done(value="approved")

    b = agent("boss").contracts(input=Idea, output=Done).engine(boss)
    c = agent("checker").contracts(input=Count, output=Count).engine(lambda c: c).needs_approval()
    app = make_app([b, c], entry=[b])
    handle = await app.start(Idea(topic="x"))
    assert await handle.approval(timeout=10) == "checker"
    await app.aresolve(handle.run_id, "checker", False)
    result = await handle.result(timeout=10)
    assert result["boss"] == Done(value="CallFailedError:rejected")
    assert result.agent_status["checker"] == "rejected"


@pytest.mark.parametrize("shape", ["self", "cycle"])
async def test_call_cycles_are_refused(make_app: MakeApp, shape: str) -> None:
    async def a_fn(c: Count, ctx: DurableContext) -> Count:
        target = "a" if shape == "self" else "b"
        return await ctx.call(target, Count(n=c.n + 1)) if c.n < 3 else c

    async def b_fn(c: Count, ctx: DurableContext) -> Count:
        return await ctx.call("a", Count(n=c.n + 1))  # type: ignore[no-any-return]

    a = agent("a").contracts(input=Count, output=Count).engine(a_fn)
    b = agent("b").contracts(input=Count, output=Count).engine(b_fn)
    app = make_app([a, b], entry=[a])
    with pytest.raises(RunFailedError) as info:
        await app.arun(Count(n=0), timeout=20)
    assert "CallCycleError" in str(info.value) or info.value.error_type == "CallCycleError"
    assert "waiting up the call chain" in str(info.value)


class _Odd(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


@pytest.mark.parametrize("kind", ["CancelledError", "GeneratorExit", "_Odd"])
async def test_base_exceptions_from_user_code_fail_the_run_clearly(make_app: MakeApp, kind: str) -> None:
    tries: list[int] = []

    async def bad(c: Count) -> Count:
        tries.append(1)
        if kind == "CancelledError":
            task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
            task.cancel()
            await task  # raises CancelledError into the step: not a cancellation of the run
        raise {"GeneratorExit": GeneratorExit, "_Odd": _Odd}[kind]()

    w = agent("w").contracts(input=Count, output=Count).engine(bad).retry(max_attempts=2, initial_interval=0.01)
    app = make_app([w])
    with pytest.raises(RunFailedError) as info:
        await app.arun(Count(n=1), timeout=20)
    assert info.value.agent == "w" and info.value.error_type == kind
    assert len(tries) == 2, "retried per the policy, then failed"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
async def test_bad_sleep_durations_are_refused(make_app: MakeApp, value: float) -> None:
    async def sleeper(c: Count, ctx: DurableContext) -> Count:
        await ctx.sleep(value)
        return c

    app = make_app([agent("s").contracts(input=Count, output=Count).engine(sleeper)])
    with pytest.raises(RunFailedError, match="ctx.sleep duration must be a finite number") as info:
        await app.arun(Count(n=1), timeout=20)
    assert info.value.error_type == "UsageError"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
async def test_bad_send_delays_are_refused(make_app: MakeApp, value: float) -> None:
    async def sender(c: Count, ctx: DurableContext) -> Count:
        await ctx.send("sink", c, delay=value)
        return c

    s = agent("s").contracts(input=Count, output=Count).engine(sender)
    sink = agent("sink").contracts(input=Count, output=Count).engine(lambda c: c)
    app = make_app([s, sink], entry=[s])
    with pytest.raises(RunFailedError, match="ctx.send delay to 'sink' must be a finite number") as info:
        await app.arun(Count(n=1), timeout=20)
    assert info.value.error_type == "UsageError" and info.value.agent == "s"


async def test_parallel_branches_get_their_own_results(make_app: MakeApp) -> None:
    def work(tag: str, i: int) -> str:
        return f"{tag}{i}"

    async def chain(tag: str, delay: float, ctx: DurableContext) -> list[str]:
        out = []
        for i in range(3):
            await asyncio.sleep(delay)
            out.append(await ctx.step("work", work, tag, i))
        return out

    async def fork(i: Idea, ctx: DurableContext) -> Done:
        a, b = await asyncio.gather(chain("A", 0.003, ctx), chain("B", 0.001, ctx))
        return Done(value=",".join(a + b))

    app = make_app([agent("fork").contracts(input=Idea, output=Done).engine(fork)])
    result = await app.arun(Idea(topic="x"))
    assert result["fork"] == Done(value="A0,A1,A2,B0,B1,B2")
    positions: Any = sorted(str(s.position) for s in result.record.activations[0].steps)
    assert positions == ["0:0", "0:1", "0:2", "1:0", "1:1", "1:2"], "each branch numbers its own steps"


async def test_one_list_output_is_one_batch_across_its_each_edges(make_app: MakeApp) -> None:
    """Two each=True edges carry the same list: item i is the same batch item on both, so a
    converge of the two per-item workers fires once per item, and one gather collects them."""
    split = agent("split").contracts(input=Idea, output=list[Count]).engine(_numbers)
    dbl = agent("dbl").contracts(input=Count, output=Count).engine(lambda c: Count(n=2 * c.n)).reacts_to(split, each=True)
    neg = agent("neg").contracts(input=Count, output=Item).engine(lambda c: Item(name=f"-{c.n}"))
    neg.reacts_to(split, each=True)
    pair = agent("pair").contracts(input=(Count, Item), output=Done)
    pair.engine(lambda c, i: Done(value=f"{c.n}{i.name}")).reacts_to(dbl, neg)
    join = agent("join").contracts(input=list[Done], output=Done)
    join.engine(lambda ds: Done(value=",".join(d.value for d in ds))).reacts_to(pair)
    app = make_app([split, dbl, neg, pair, join])
    assert (await app.arun(Idea(topic="312")))["join"] == Done(value="6-3,2-1,4-2")
