"""Messages: reacts_to edges, fan-out, converge, each/gather, one-way and request/response sends."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from roost import DurableContext, RunFailedError, agent

from .conftest import MakeApp
from .models import Count, Done, Draft, Idea, Item, Review, Verdict

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_fan_out_runs_in_parallel_and_converge_fires_once(make_app: MakeApp) -> None:
    fired: list[tuple[str, str]] = []

    def root(i: Idea) -> Draft:
        return Draft(title=i.topic, body="b")

    spans: dict[str, tuple[float, float]] = {}

    async def slow_review(d: Draft) -> Review:
        t0 = time.monotonic()
        await asyncio.sleep(0.3)
        spans["critic"] = (t0, time.monotonic())
        return Review(score=7, notes="slow")

    async def slow_fact(d: Draft) -> Done:
        t0 = time.monotonic()
        await asyncio.sleep(0.3)
        spans["facts"] = (t0, time.monotonic())
        return Done(value="facts ok")

    def decide(d: Draft, r: Review, f: Done) -> Verdict:
        fired.append((r.notes, f.value))
        return Verdict(publish=True, title=d.title)

    w = agent("writer").contracts(input=Idea, output=Draft).engine(root)
    c = agent("critic").contracts(input=Draft, output=Review).engine(slow_review).reacts_to(w)
    f = agent("facts").contracts(input=Draft, output=Done).engine(slow_fact).reacts_to(w)
    e = agent("editor").contracts(input=(Draft, Review, Done), output=Verdict).engine(decide)
    e.reacts_to(w, c, f)
    app = make_app([w, c, f, e])
    result = await app.arun(Idea(topic="t"))
    (a0, a1), (b0, b1) = spans["critic"], spans["facts"]
    assert a0 < b1 and b0 < a1, "the two branches run at the same time"
    assert fired == [("slow", "facts ok")]
    assert result["editor"] == Verdict(publish=True, title="t")


async def test_converge_slots_follow_types_not_order(make_app: MakeApp) -> None:
    w = agent("writer").contracts(input=Idea, output=Draft).engine(lambda i: Draft(title=i.topic, body="b"))
    c = agent("critic").contracts(input=Draft, output=Review).engine(lambda d: Review(score=1, notes=d.title))
    c.reacts_to(w)
    e = agent("editor").contracts(input=(Review, Draft), output=Verdict)
    e.engine(lambda r, d: Verdict(publish=r.notes == d.title, title=d.title)).reacts_to(w, c)
    app = make_app([w, c, e])
    assert (await app.arun(Idea(topic="same")))["editor"].publish is True


async def test_when_and_map_on_edges(make_app: MakeApp) -> None:
    src = agent("src").contracts(input=Count, output=Count).engine(lambda c: c)
    big = agent("big").contracts(input=Count, output=Done).engine(lambda c: Done(value="big"))
    big.reacts_to(src, when=lambda c: c.n > 10)
    small = agent("small").contracts(input=Item, output=Done).engine(lambda i: Done(value=i.name))

    def to_item(c: Count) -> Item:
        return Item(name=f"n={c.n}")

    small.reacts_to(src, when=lambda c: c.n <= 10, map=to_item)
    app = make_app([src, big, small])
    r1 = await app.arun(Count(n=3))
    assert "big" not in r1 and r1["small"] == Done(value="n=3")
    r2 = await app.arun(Count(n=30))
    assert "small" not in r2 and r2["big"] == Done(value="big")


async def test_each_activates_per_item_and_list_input_gathers_them(make_app: MakeApp) -> None:
    running = 0
    peak = 0
    all_in = asyncio.Event()

    async def work(item: Item) -> Done:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            all_in.set()
        with contextlib.suppress(TimeoutError):  # a barrier, bounded: parallel items all get here
            await asyncio.wait_for(all_in.wait(), 5.0)
        await asyncio.sleep(0.05)
        running -= 1
        return Done(value=item.name.upper())

    split = agent("split").contracts(input=Idea, output=list[Item])
    split.engine(lambda i: [Item(name=f"{i.topic}{k}") for k in range(4)])
    worker = agent("worker").contracts(input=Item, output=Done).engine(work).reacts_to(split, each=True)
    join = agent("join").contracts(input=list[Done], output=Done)
    join.engine(lambda ds: Done(value=",".join(d.value for d in ds))).reacts_to(worker)
    app = make_app([split, worker, join])
    result = await app.arun(Idea(topic="x"))
    assert result["join"] == Done(value="X0,X1,X2,X3")
    assert len(result.all("worker")) == 4
    assert peak == 4, "per-item activations run in parallel"


async def test_gather_counts_items_filtered_by_when(make_app: MakeApp) -> None:
    split = agent("split").contracts(input=Idea, output=list[Count]).engine(lambda i: [Count(n=k) for k in range(5)])
    worker = agent("worker").contracts(input=Count, output=Count).engine(lambda c: c).reacts_to(split, each=True)
    total = agent("total").contracts(input=list[Count], output=Count).engine(lambda cs: Count(n=sum(c.n for c in cs)))
    total.reacts_to(worker, when=lambda c: c.n % 2 == 0)
    app = make_app([split, worker, total])
    assert (await app.arun(Idea(topic="x")))["total"] == Count(n=0 + 2 + 4)


async def test_guarded_loop_and_activation_limit(make_app: MakeApp) -> None:
    step = agent("step").contracts(input=Count, output=Count).engine(lambda c: Count(n=c.n + 1))
    step.reacts_to(step, when=lambda c: c.n < 5)
    app = make_app([step])
    assert [c.n for c in (await app.arun(Count(n=0)))["step"]] == [1, 2, 3, 4, 5]

    runaway = agent("step").contracts(input=Count, output=Count).engine(lambda c: Count(n=c.n + 1))
    runaway.reacts_to(runaway, when=lambda c: c.n >= 0)
    app2 = make_app([runaway], max_activations=25)
    with pytest.raises(RunFailedError, match="limit of 25 activations") as info:
        await app2.arun(Count(n=0))
    assert info.value.error_type == "ActivationLimitError"


async def test_one_way_send_delayed_send_and_request_response(make_app: MakeApp) -> None:
    got: list[tuple[str, float]] = []
    t0 = time.monotonic()

    def sink(d: Done) -> Done:
        got.append((d.value, time.monotonic() - t0))
        return d

    def double(c: Count) -> Count:
        return Count(n=c.n * 2)

    async def boss(i: Idea, ctx: DurableContext) -> Done:
        doubled = await ctx.call("doubler", Count(n=21))
        await ctx.send("sink", Done(value="now"))
        await ctx.send("sink", {"value": "later"}, delay=0.4)
        return Done(value=str(doubled.n))

    b = agent("boss").contracts(input=Idea, output=Done).engine(boss)
    s = agent("sink").contracts(input=Done, output=Done).engine(sink)
    d = agent("doubler").contracts(input=Count, output=Count).engine(double)
    app = make_app([b, s, d], entry=[b])
    result = await app.arun(Idea(topic="x"))
    assert result["boss"] == Done(value="42")
    assert [v for v, _ in got] == ["now", "later"]
    assert got[1][1] >= 0.39
    senders = {a.agent: a.cause for a in result.record.activations}
    boss_id = next(a.id for a in result.record.activations if a.agent == "boss")
    assert senders["sink"] == boss_id and senders["doubler"] == boss_id


async def test_send_to_unknown_agent_or_with_bad_payload_fails_clearly(make_app: MakeApp) -> None:
    async def boss(i: Idea, ctx: DurableContext) -> Done:
        await ctx.send("sink", {"nope": 1})
        return Done(value="x")

    b = agent("boss").contracts(input=Idea, output=Done).engine(boss)
    s = agent("sink").contracts(input=Done, output=Done).engine(lambda d: d)
    app = make_app([b, s], entry=[b])
    with pytest.raises(RunFailedError, match="cannot accept the output of 'boss' as Done: value: Field required"):
        await app.arun(Idea(topic="x"))


async def test_call_to_a_failing_agent_raises_a_roost_error_in_the_caller(make_app: MakeApp) -> None:
    seen: list[str] = []

    def broken(c: Count) -> Count:
        raise ValueError("callee broke")

    async def boss(i: Idea, ctx: DurableContext) -> Done:
        try:
            await ctx.call("worker", Count(n=1))
        except Exception as exc:  # what users catch: never an engine's own exception type
            await ctx.step("note", seen.append, f"{type(exc).__module__.split('.')[0]}:{exc}")
            raise
        return Done(value="unreachable")

    b = agent("boss").contracts(input=Idea, output=Done).engine(boss)
    w = agent("worker").contracts(input=Count, output=Count).engine(broken).retry(max_attempts=1)
    app = make_app([b, w], entry=[b])
    with pytest.raises(RunFailedError) as info:
        await app.arun(Idea(topic="x"), timeout=30)
    # The run fails naming an agent; a caller that sees the failure sees a roost error (the
    # embedded runtime stops the caller instead, so it sees nothing).
    assert info.value.agent in ("worker", "boss")
    assert all(s.startswith("roost:") for s in seen), seen
