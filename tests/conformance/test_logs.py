"""Structured logs on every runtime: a retried step is logged once per failed attempt, with the
attempt number and the cause, the run id and the agent as ``extra=`` fields (docs/observability.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from roost import DurableContext, RetryPolicy, agent

from .conftest import MakeApp
from .models import Done, Idea

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_retried_step_is_logged_with_its_attempt_and_cause(
        make_app: MakeApp, uid: Callable[[str], str], caplog: pytest.LogCaptureFixture) -> None:
    failures: list[int] = []

    def flaky(topic: str) -> str:
        if len(failures) < 2:
            failures.append(1)
            raise ConnectionError(f"hiccup {len(failures)}")
        return topic.upper()

    async def work(idea: Idea, ctx: DurableContext) -> Done:
        return Done(value=await ctx.step("fetch", flaky, idea.topic,
                                         retry=RetryPolicy(max_attempts=3, initial_interval=0.01)))

    app = make_app([agent("fetcher").contracts(input=Idea, output=Done).engine(work)])
    run_id = uid("r-logged")
    with caplog.at_level(logging.INFO, logger="roost"):
        assert (await app.arun(Idea(topic="x"), run_id=run_id))["fetcher"] == Done(value="X")
    mine = [r for r in caplog.records if getattr(r, "run_id", None) == run_id and hasattr(r, "attempt")]
    assert [(r.levelno, r.attempt, r.cause, r.agent, r.step) for r in mine] == [  # type: ignore[attr-defined]
        (logging.WARNING, 1, "ConnectionError: hiccup 1", "fetcher", "fetch"),
        (logging.WARNING, 2, "ConnectionError: hiccup 2", "fetcher", "fetch")], [r.getMessage() for r in mine]
    assert all(r.name.startswith("roost.") and "hiccup" in r.getMessage() for r in mine)
