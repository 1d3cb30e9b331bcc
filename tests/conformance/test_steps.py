"""Durable steps: retries, terminal errors, idempotency keys, journaled results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roost import (
    DurableContext,
    RetryableError,
    RetryPolicy,
    RunFailedError,
    TerminalError,
    agent,
    current_step,
)

from .conftest import MakeApp
from .models import Done, Idea

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01)


async def test_step_retries_until_success_and_reports_attempts(make_app: MakeApp) -> None:
    calls: list[int] = []

    def flaky(idea: Idea) -> Done:
        calls.append(current_step().attempt)
        if len(calls) < 3:
            raise ConnectionError("transient")
        return Done(value=idea.topic)

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(flaky).retry(FAST)])
    result = await app.arun(Idea(topic="x"))
    assert result["a"] == Done(value="x")
    assert calls == [1, 2, 3]
    assert result.attempts == {"a": 3}


async def test_exhausted_retries_fail_the_run_naming_agent_step_attempts(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    calls = 0

    def broken(idea: Idea) -> Done:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad {calls}")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(broken).retry(FAST)])
    with pytest.raises(RunFailedError) as info:
        await app.arun(Idea(topic="x"), run_id=uid("r-fail"))
    err = info.value
    assert (err.run_id, err.agent, err.step, err.attempts) == (uid("r-fail"), "a", "a", 3)
    assert err.error_type == "ValueError" and err.error_message == "bad 3"
    assert calls == 3
    record = (await app.aget(uid("r-fail"))).record
    assert record.status == "failed"


async def test_terminal_error_is_not_retried(make_app: MakeApp) -> None:
    calls = 0

    def refuse(idea: Idea) -> Done:
        nonlocal calls
        calls += 1
        raise TerminalError("never")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(refuse).retry(FAST)])
    with pytest.raises(RunFailedError, match="TerminalError: never") as info:
        await app.arun(Idea(topic="x"))
    assert calls == 1 and info.value.attempts == 1


async def test_non_retryable_types_from_policy(make_app: MakeApp) -> None:
    calls = 0

    def refuse(idea: Idea) -> Done:
        nonlocal calls
        calls += 1
        raise KeyError("k")

    policy = RetryPolicy(max_attempts=5, initial_interval=0.01, non_retryable=(KeyError,))
    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(refuse).retry(policy)])
    with pytest.raises(RunFailedError):
        await app.arun(Idea(topic="x"))
    assert calls == 1


async def test_retryable_error_waits_retry_after(make_app: MakeApp) -> None:
    import time

    stamps: list[float] = []

    def slow_down(idea: Idea) -> Done:
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise RetryableError("429", retry_after=0.3)
        return Done(value="ok")

    policy = RetryPolicy(max_attempts=2, initial_interval=0.0)
    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(slow_down).retry(policy)])
    await app.arun(Idea(topic="x"))
    assert stamps[1] - stamps[0] >= 0.29


async def test_idempotency_key_is_stable_across_retries_and_distinct_per_step(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    keys: dict[str, list[str]] = {}

    def tool(label: str) -> str:
        info = current_step()
        keys.setdefault(label, []).append(info.idempotency_key)
        if len(keys[label]) < 2:
            raise ConnectionError("retry me")
        return label

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        a = await ctx.step("first", tool, "first", retry=FAST)
        b = await ctx.step("second", tool, "second", retry=FAST)
        return Done(value=a + b)

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    result = await app.arun(Idea(topic="x"), run_id=uid("r-keys"))
    assert result["a"].value == "firstsecond"
    assert len(set(keys["first"])) == 1 and len(keys["first"]) == 2
    assert len(set(keys["second"])) == 1
    assert keys["first"][0] != keys["second"][0]
    assert uid("r-keys") in keys["first"][0]


async def test_unserializable_step_result_fails_at_once_with_clear_error(make_app: MakeApp) -> None:
    calls = 0

    def gives_object() -> Any:
        nonlocal calls
        calls += 1
        return object()

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        await ctx.step("fetch", gives_object, retry=FAST)
        return Done(value="unreachable")

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    with pytest.raises(RunFailedError, match="SerializationError") as info:
        await app.arun(Idea(topic="x"))
    assert calls == 1
    assert "step 'fetch'" in info.value.error_message and "cannot be journaled" in info.value.error_message


async def test_output_contract_violation_is_terminal_and_names_field(make_app: MakeApp) -> None:
    calls = 0

    def wrong(idea: Idea) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"val": 1}

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(wrong).retry(FAST)])
    with pytest.raises(RunFailedError, match="ContractViolationError") as info:
        await app.arun(Idea(topic="x"))
    assert calls == 1
    assert "'a'" in info.value.error_message and "value: Field required" in info.value.error_message


async def test_step_results_round_trip_to_the_annotated_type(make_app: MakeApp) -> None:
    def make_done() -> Done:
        return Done(value="typed")

    seen: list[object] = []

    async def orchestrate(idea: Idea, ctx: DurableContext) -> Done:
        d = await ctx.step("make", make_done)
        seen.append(d)
        return d

    app = make_app([agent("a").contracts(input=Idea, output=Done).engine(orchestrate)])
    await app.arun(Idea(topic="x"))
    # On replay the journaled value comes back as the same type (the code may run more than once).
    assert seen and all(v == Done(value="typed") and type(v) is Done for v in seen)
