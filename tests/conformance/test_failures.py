"""Failed runs: one attempt count everywhere (error, activation, step), and the user's own traceback.

``attempts`` is how many times the failing step's function was invoked; a failure of the
agent's code outside any step counts 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest

import roost
from roost import DurableContext, RetryPolicy, RunFailedError, agent
from roost.errors import StepFailedError
from roost.result import ActivationRecord, RunRecord, StepRecord

from .conftest import MakeApp
from .models import Done, Idea

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01)
TWICE = RetryPolicy(max_attempts=2, initial_interval=0.01)
ROOST_DIR = os.path.dirname(os.path.abspath(roost.__file__)) + os.sep


def _deeper(topic: str) -> None:
    raise ValueError(f"no good: {topic}")


def explode(idea: Idea) -> Done:
    _deeper(idea.topic)
    return Done(value="never")


EXPLODE_LINE = explode.__code__.co_firstlineno + 1
DEEPER_LINE = _deeper.__code__.co_firstlineno + 1


def _activation(record: RunRecord, agent_name: str) -> ActivationRecord:
    return next(a for a in record.activations if a.agent == agent_name)


def _step(act: ActivationRecord, name: str) -> StepRecord:
    return next(s for s in act.steps if s.kind == "step" and s.name == name)


async def _failed(app: roost.App, run_id: str) -> tuple[RunFailedError, RunRecord]:
    with pytest.raises(RunFailedError) as info:
        await app.arun(Idea(topic="x"), run_id=run_id)
    return info.value, (await app.aget(run_id)).record


async def test_failed_agent_attempts_agree_in_error_activation_and_step(make_app: MakeApp,
                                                                        uid: Callable[[str], str]) -> None:
    calls: list[int] = []

    def broken(idea: Idea) -> Done:
        calls.append(1)
        raise ValueError(f"bad {len(calls)}")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(broken).retry(FAST)])
    err, record = await _failed(app, uid("r-att"))
    act = _activation(record, "a")
    step = _step(act, "a")
    assert len(calls) == 3
    assert (err.attempts, record.error and record.error["attempts"], act.error and act.error["attempts"],
            act.attempts, step.attempts) == (3, 3, 3, 3, 3)
    assert step.status == "failed"
    assert (await app.aget(uid("r-att"))).attempts == {"a": 3}


async def test_failed_step_attempts_are_its_own_not_an_earlier_steps(make_app: MakeApp,
                                                                     uid: Callable[[str], str]) -> None:
    flaky_calls: list[int] = []

    def flaky(topic: str) -> str:
        flaky_calls.append(1)
        if len(flaky_calls) < 3:
            raise ConnectionError("transient")
        return topic

    def broken(topic: str) -> str:
        raise ValueError("bad")

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        await ctx.step("flaky", flaky, idea.topic, retry=FAST)
        await ctx.step("broken", broken, idea.topic, retry=TWICE)
        return Done(value="never")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    err, record = await _failed(app, uid("r-att2"))
    act = _activation(record, "a")
    assert (err.step, err.attempts) == ("broken", 2)
    assert act.attempts == 2 and act.error is not None and act.error["attempts"] == 2
    assert (_step(act, "broken").status, _step(act, "broken").attempts) == ("failed", 2)
    assert (_step(act, "flaky").status, _step(act, "flaky").attempts) == ("done", 3)


async def test_failure_outside_any_step_counts_one_attempt(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    calls: list[int] = []

    def flaky(topic: str) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("transient")
        return topic

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        await ctx.step("flaky", flaky, idea.topic, retry=FAST)
        raise KeyError("missing")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    err, record = await _failed(app, uid("r-att3"))
    act = _activation(record, "a")
    assert (err.step, err.attempts, err.error_type) == (None, 1, "KeyError")
    assert act.attempts == 1 and act.error is not None and act.error["attempts"] == 1


async def test_a_caught_step_failure_is_recorded_with_its_attempts(make_app: MakeApp,
                                                                   uid: Callable[[str], str]) -> None:
    def broken(topic: str) -> str:
        raise ValueError("bad")

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        try:
            await ctx.step("broken", broken, idea.topic, retry=TWICE)
        except StepFailedError as exc:
            return Done(value=f"{exc.attempts} {type(exc.cause).__name__}")
        return Done(value="never")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    result = await app.arun(Idea(topic="x"), run_id=uid("r-att4"))
    assert result["a"] == Done(value="2 ValueError")
    step = _step(_activation(result.record, "a"), "broken")
    assert (step.status, step.attempts) == ("failed", 2)


async def test_failed_step_shows_the_users_traceback(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(explode).retry(TWICE)])
    err, record = await _failed(app, uid("r-tb"))
    tb = err.traceback
    assert tb is not None
    assert f'File "{__file__}", line {EXPLODE_LINE}, in explode' in tb
    assert f'File "{__file__}", line {DEEPER_LINE}, in _deeper' in tb
    assert tb.rstrip().endswith("ValueError: no good: x")
    assert ROOST_DIR not in tb  # roost's own frames are left out
    assert f"(raised at {__file__}:{DEEPER_LINE}, in _deeper)" in str(err)
    assert record.error is not None and record.error["traceback"] == tb
    act = _activation(record, "a")
    assert act.error is not None and act.error["traceback"] == tb


async def test_failure_in_engine_code_shows_the_users_traceback(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        await ctx.step("fine", str.upper, idea.topic)
        return Done(value={"k": 1}[idea.topic])  # type: ignore[index]

    line = orchestrate.__code__.co_firstlineno + 2
    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    err, record = await _failed(app, uid("r-tb2"))
    assert err.traceback is not None
    assert f'File "{__file__}", line {line}, in orchestrate' in err.traceback
    assert "KeyError: 'x'" in err.traceback and ROOST_DIR not in err.traceback
    assert record.error is not None and record.error["traceback"] == err.traceback


async def test_a_failure_of_roost_itself_has_no_user_traceback(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    def wrong(idea: Idea):  # type: ignore[no-untyped-def]  # no return type: roost checks the contract
        return {"nope": 1}

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(wrong)])
    err, _ = await _failed(app, uid("r-tb3"))
    assert err.error_type == "ContractViolationError"
    assert err.traceback is None and "raised at" not in str(err)


async def test_credentials_in_an_error_are_masked(make_app: MakeApp, uid: Callable[[str], str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A step's error naming a URL with credentials: the run's error, its record, its
    traceback and the retry log lines show the URL with the secrets masked."""
    caplog.set_level(logging.WARNING, logger="roost")
    url = "https://bob:hunter2@api.example.test/v1/chat?api_key=sk-live-123&x=1"

    def call() -> str:
        raise ConnectionError(f"cannot reach {url}")

    async def work(idea: Idea, ctx: DurableContext) -> Done:
        return Done(value=await ctx.step("call", call, retry=TWICE))

    app = make_app([agent("caller").contracts(input=Idea, output=Done).engine(work)])
    run_id = uid("r-secret")
    err, record = await _failed(app, run_id)
    shown = [str(err), err.traceback or "", str(record.error), str(record.activations[0].error)]
    shown += [r.getMessage() + str(getattr(r, "cause", "")) for r in caplog.records if getattr(r, "run_id", None) == run_id]
    assert len(shown) > 4, "the failed attempts were not logged"
    for text in shown:
        assert "hunter2" not in text and "sk-live-123" not in text, text
    assert "https://***@api.example.test/v1/chat?api_key=***&x=1" in str(err)
