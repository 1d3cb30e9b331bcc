"""Runs: correlation ids, idempotent re-runs, causation, bad input, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from roost import InputValidationError, RunFailedError, agent
from roost.errors import RunConflictError

from .conftest import MakeApp
from .models import Draft, Idea, Review, Verdict

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def pipeline(counts: dict[str, int]) -> list:
    def write(i: Idea) -> Draft:
        counts["writer"] = counts.get("writer", 0) + 1
        return Draft(title=i.topic.title(), body="b")

    def review(d: Draft) -> Review:
        counts["critic"] = counts.get("critic", 0) + 1
        return Review(score=len(d.title), notes="n")

    def decide(d: Draft, r: Review) -> Verdict:
        counts["editor"] = counts.get("editor", 0) + 1
        return Verdict(publish=r.score > 3, title=d.title)

    writer = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    critic = agent("critic").contracts(input=Draft, output=Review).engine(review).reacts_to(writer)
    editor = agent("editor").contracts(input=(Draft, Review), output=Verdict).engine(decide)
    editor.reacts_to(writer, critic)
    return [writer, critic, editor]


async def test_same_run_id_returns_recorded_result_without_reexecuting(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    counts: dict[str, int] = {}
    app = make_app(pipeline(counts))
    first = await app.arun(Idea(topic="durable"), run_id=uid("r1"))
    again = await app.arun({"topic": "durable"}, run_id=uid("r1"))
    assert first["editor"] == again["editor"] == Verdict(publish=True, title="Durable")
    assert counts == {"writer": 1, "critic": 1, "editor": 1}


async def test_same_run_id_with_other_input_is_a_conflict(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = make_app(pipeline({}))
    await app.arun(Idea(topic="one"), run_id=uid("r1"))
    with pytest.raises(RunConflictError, match=uid("r1")):
        await app.arun(Idea(topic="two"), run_id=uid("r1"))


async def test_input_as_dict_or_json_and_bad_input_starts_nothing(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = make_app(pipeline({}))
    assert (await app.arun('{"topic": "json"}'))["writer"].title == "Json"
    with pytest.raises(InputValidationError, match="field topic: Field required") as info:
        await app.arun({"topik": "x"}, run_id=uid("never"))
    assert info.value.agent == "writer"
    runtime = await app.runtime()
    assert "never" not in {r.run_id for r in await runtime.list_runs()}
    with pytest.raises(InputValidationError, match="not valid JSON"):
        await app.arun("{nope")


async def test_correlation_and_causation_are_recorded(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = make_app(pipeline({}))
    result = await app.arun(Idea(topic="trace"), run_id=uid("r-trace"))
    acts = {a.id: a for a in result.record.activations}
    by_agent = {a.agent: a for a in acts.values() if a.status == "completed"}
    assert by_agent["writer"].cause is None
    assert by_agent["critic"].cause == by_agent["writer"].id
    assert by_agent["editor"].cause in (by_agent["writer"].id, by_agent["critic"].id)
    assert result.run_id == uid("r-trace") and result.record.run_id == uid("r-trace")
    assert set(result.timings) == {"writer", "critic", "editor"}


async def test_failure_lets_running_branches_finish_and_starts_nothing_new(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    finished: list[str] = []

    def root(i: Idea) -> Draft:
        return Draft(title="t", body="b")

    def boom(d: Draft) -> Review:
        raise TypeError("broken critic")

    async def slow(d: Draft) -> Review:
        await asyncio.sleep(0.3)
        finished.append("slow")
        return Review(score=1, notes="slow")

    def after_slow(r: Review) -> Verdict:
        finished.append("after_slow")
        return Verdict(publish=False, title="x")

    a = agent("root").contracts(input=Idea, output=Draft).engine(root)
    b = agent("boom").contracts(input=Draft, output=Review).engine(boom).retry(max_attempts=1).reacts_to(a)
    c = agent("slow").contracts(input=Draft, output=Review).engine(slow).reacts_to(a)
    d = agent("after_slow").contracts(input=Review, output=Verdict).engine(after_slow).reacts_to(c)
    app = make_app([a, b, c, d])
    with pytest.raises(RunFailedError, match="broken critic") as info:
        await app.arun(Idea(topic="x"), run_id=uid("r-partial"))
    assert info.value.agent == "boom"
    assert finished == ["slow"]
    result = await app.aget(uid("r-partial"))
    assert result.status == "failed"
    assert result.agent_status["slow"] == "completed"
    assert result.error is not None and result.error.agent == "boom"


async def test_many_runs_in_flight_do_not_mix(make_app: MakeApp) -> None:
    app = make_app(pipeline({}))
    topics = [f"topic{i}" for i in range(30)]
    results = await asyncio.gather(*(app.arun(Idea(topic=t)) for t in topics))
    assert [r["editor"].title for r in results] == [t.title() for t in topics]
    assert len({r.run_id for r in results}) == 30


_RELEASED: set[str] = set()


async def test_the_record_shows_an_agent_at_work(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    """While an agent is inside a long step (a slow model call), the run's record already shows
    its activation running, before it has an outcome (what roost ui and runs show read)."""
    run_id = uid("r-at-work")

    async def slow(topic: str) -> str:
        for _ in range(1200):  # bounded: 60 s at most
            if run_id in _RELEASED:
                break
            await asyncio.sleep(0.05)
        return f"about {topic}"

    async def write(idea: Idea, ctx: Any) -> Draft:
        return Draft(title=idea.topic, body=await ctx.step("slow", slow, idea.topic))

    w = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    c = agent("critic").contracts(input=Draft, output=Review).engine(lambda d: Review(score=1, notes=d.body))
    app = make_app([w, c.reacts_to(w)])
    handle = await app.start(Idea(topic="t"), run_id=run_id)
    try:
        statuses: dict[str, str] = {}
        for _ in range(600):  # bounded: 30 s at most
            statuses = {a.agent: a.status for a in (await handle.record()).activations}
            if statuses.get("writer") == "running":
                break
            await asyncio.sleep(0.05)
        assert statuses == {"writer": "running"}, statuses
    finally:
        _RELEASED.add(run_id)
    result = await handle.result(timeout=60)
    assert result.status == "completed"
    assert {a.agent: a.status for a in (await handle.record()).activations} == {"writer": "completed",
                                                                               "critic": "completed"}
