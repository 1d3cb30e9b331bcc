"""Entity state, durable timers, durable promises and approvals, journaled now/uuid/random."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from roost import App, DurableContext, RunFailedError, agent
from roost.errors import PromiseError, UsageError

from .conftest import MakeApp
from .models import Count, Done, Draft, Idea, Verdict

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_state_is_per_entity_and_survives_activations(make_app: MakeApp) -> None:
    async def tally(c: Count, ctx: DurableContext) -> Count:
        seen = await ctx.state.get("seen", [])
        ctx.state.set("seen", [*seen, c.n])
        if c.n == 2:
            ctx.state.clear("seen")
        return Count(n=c.n + 1)

    step = agent("step").contracts(input=Count, output=Count).engine(tally)
    step.reacts_to(step, when=lambda c: c.n < 4)
    probe: list[object] = []

    async def read(c: Count, ctx: DurableContext) -> Done:
        # Orchestration code may be replayed: side effects go in a step.
        await ctx.step("probe", probe.append, await ctx.state.get("seen"))
        return Done(value="ok")

    reader = agent("reader").contracts(input=Count, output=Done).engine(read).reacts_to(step, when=lambda c: c.n == 4)
    app = make_app([step, reader])
    await app.arun(Count(n=0))
    assert probe == [None], "state belongs to one agent's entity, not to others"

    spy: list[object] = []

    async def tally2(c: Count, ctx: DurableContext) -> Count:
        seen = await ctx.state.get("seen", [])
        await ctx.step("spy", spy.append, list(seen))
        ctx.state.set("seen", [*seen, c.n])
        return Count(n=c.n + 1)

    s2 = agent("step").contracts(input=Count, output=Count).engine(tally2)
    s2.reacts_to(s2, when=lambda c: c.n < 3)
    app2 = make_app([s2])
    await app2.arun(Count(n=0))
    assert spy == [[], [0], [0, 1]]


async def test_keyed_entity_state_lives_across_runs(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    async def remember(i: Idea, ctx: DurableContext) -> Count:
        n = await ctx.state.get("count", 0) + 1
        ctx.state.set("count", n)
        return Count(n=n)

    a = agent("memo").contracts(input=Idea, output=Count).engine(remember).keyed_by(lambda i: i.topic)
    app = make_app([a])
    assert (await app.arun(Idea(topic="u1")))["memo"].n == 1
    assert (await app.arun(Idea(topic="u1"), run_id=uid("second")))["memo"].n == 2
    assert (await app.arun(Idea(topic="u2")))["memo"].n == 1


async def test_durable_timer_sleeps(make_app: MakeApp) -> None:
    async def nap(i: Idea, ctx: DurableContext) -> Done:
        t0 = await ctx.now()
        await ctx.sleep(0.3)
        t1 = await ctx.now()
        return Done(value=f"{(t1 - t0).total_seconds():.3f}")

    app = make_app([agent("nap").contracts(input=Idea, output=Done).engine(nap)])
    assert float((await app.arun(Idea(topic="x")))["nap"].value) >= 0.29


async def test_promise_resolved_from_outside(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    async def wait(i: Idea, ctx: DurableContext) -> Done:
        value = await ctx.promise("go")
        early = await ctx.promise("early")
        return Done(value=f"{value['word']}-{early}")

    app = make_app([agent("w").contracts(input=Idea, output=Done).engine(wait)])
    handle = await app.start(Idea(topic="x"), run_id=uid("r-p"))
    await app.aresolve(uid("r-p"), "early", 7)  # resolving before anyone waits is kept
    assert await handle.approval(timeout=5) == "go"
    assert (await handle.record()).status == "waiting"
    await app.aresolve(uid("r-p"), "go", {"word": "hi"})
    result = await handle.result(timeout=5)
    assert result["w"] == Done(value="hi-7")
    with pytest.raises(PromiseError):
        await app.aresolve(uid("r-p"), "go", {"word": "again"})


async def test_double_resolve_is_refused(make_app: MakeApp) -> None:
    async def wait(i: Idea, ctx: DurableContext) -> Done:
        await ctx.promise("a")
        await ctx.promise("b")
        return Done(value="x")

    app = make_app([agent("w").contracts(input=Idea, output=Done).engine(wait)])
    handle = await app.start(Idea(topic="x"))
    await app.aresolve(handle.run_id, "a", 1)
    with pytest.raises(PromiseError, match="resolved already"):
        await app.aresolve(handle.run_id, "a", 2)
    await app.aresolve(handle.run_id, "b", 1)
    await handle.result(timeout=5)


@pytest.mark.parametrize("approve", [True, False])
async def test_approval_holds_output_until_resolved(make_app: MakeApp, approve: bool) -> None:
    published: list[str] = []
    w = agent("writer").contracts(input=Idea, output=Draft).engine(lambda i: Draft(title=i.topic, body="b"))
    e = agent("editor").contracts(input=Draft, output=Verdict).engine(lambda d: Verdict(publish=True, title=d.title))
    e.needs_approval().reacts_to(w)

    def publish(v: Verdict) -> Done:
        published.append(v.title)
        return Done(value="published")

    p = agent("publisher").contracts(input=Verdict, output=Done).engine(publish).reacts_to(e)
    app = make_app([w, e, p])
    handle = await app.start(Idea(topic="t"))
    assert await handle.approval(timeout=5) == "editor"
    assert published == []
    await app.aresolve(handle.run_id, "editor", approve)
    result = await handle.result(timeout=5)
    assert result.status == "completed"
    assert result.agent_status["editor"] == ("completed" if approve else "rejected")
    assert published == (["t"] if approve else [])


def _approval_app(make_app: MakeApp) -> App:
    w = agent("writer").contracts(input=Idea, output=Draft).engine(lambda i: Draft(title=i.topic, body="b"))
    e = agent("editor").contracts(input=Draft, output=Verdict).engine(lambda d: Verdict(publish=True, title=d.title))
    e.needs_approval().reacts_to(w)
    return make_app([w, e])


async def test_an_approval_takes_only_a_yes_or_a_no(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = _approval_app(make_app)
    handle = await app.start(Idea(topic="t"), run_id=uid("r-a"))
    assert await handle.approval(timeout=10) == "editor"
    for bad in ([False], [0], 1, "maybe"):
        with pytest.raises(PromiseError, match="'editor' is an approval: answer it with true or false"):
            await app.aresolve(uid("r-a"), "editor", bad)
    assert (await handle.record()).status == "waiting", "a refused value decides nothing"
    await app.aresolve(uid("r-a"), "editor", {"approved": False, "reason": "too short"})
    result = await handle.result(timeout=10)
    assert result.agent_status["editor"] == "rejected"


async def test_an_unknown_promise_name_is_refused_listing_what_the_run_waits_on(
        make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = _approval_app(make_app)  # no orchestration code: the run can only ever wait on 'editor'
    handle = await app.start(Idea(topic="t"), run_id=uid("r-u"))
    assert await handle.approval(timeout=10) == "editor"
    with pytest.raises(PromiseError, match="no promise named 'editr' is awaited.*the run waits on 'editor'"):
        await app.aresolve(uid("r-u"), "editr", True)
    await app.aresolve(uid("r-u"), "editor", True)
    assert (await handle.result(timeout=10)).agent_status["editor"] == "completed"


async def test_an_empty_run_id_is_refused(make_app: MakeApp) -> None:
    app = make_app([agent("w").contracts(input=Idea, output=Done).engine(lambda i: Done(value=i.topic))])
    for bad in ("", "  "):
        with pytest.raises(UsageError, match="run_id must not be empty or blank"):
            await app.start(Idea(topic="x"), run_id=bad)
        with pytest.raises(UsageError, match="run_id must not be empty or blank"):
            await app.aresolve(bad, "w", True)


async def test_now_uuid_random_are_journaled_per_activation(make_app: MakeApp) -> None:
    async def facts(i: Idea, ctx: DurableContext) -> Done:
        now = await ctx.now()
        return Done(value=f"{now.timestamp()}|{ctx.uuid()}|{ctx.random().random()}")

    app = make_app([agent("f").contracts(input=Idea, output=Done).engine(facts)])
    before = time.time()
    value = (await app.arun(Idea(topic="x")))["f"].value
    stamp, uid, rnd = value.split("|")
    assert before - 1 <= float(stamp) <= time.time() + 1
    assert len(uid) == 36 and 0 <= float(rnd) < 1
    other = (await app.arun(Idea(topic="y")))["f"].value
    assert other.split("|")[1] != uid


async def test_a_failing_keyed_by_function_fails_the_run_clearly(make_app: MakeApp) -> None:
    def key(c: Count) -> str:
        raise KeyError("no key here")

    src = agent("src").contracts(input=Idea, output=Count).engine(lambda i: Count(n=1))
    memo = agent("memo").contracts(input=Count, output=Count).engine(lambda c: c).keyed_by(key).reacts_to(src)
    app = make_app([src, memo])
    with pytest.raises(RunFailedError, match="keyed_by function of agent 'memo' failed") as info:
        await app.arun(Idea(topic="x"), timeout=30)
    assert info.value.error_type == "TerminalError"
