"""Replay: the histories of the runs made on Temporal replay without divergence.

Temporal's ``Replayer`` re-runs roost's workflow code against each recorded history and fails on
any command that differs, which proves the orchestration is deterministic. Alphabetically this
module comes after the other conformance modules, so it replays their runs too; it also makes
runs of its own (fan-out, converge, approval, timers, send/call, keyed entities) so it proves
something when run alone. A changed wiring must be caught: the negative test replays a history
against a changed app and expects a non-determinism failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from roost import DurableContext, agent

from .conftest import MakeApp
from .models import Count, Done, Draft, Idea, Review, Verdict

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


@pytest.fixture(params=["temporal"])
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pipeline(make_app: MakeApp, *, extra_step: bool = False, name: str = "replaydemo") -> Any:
    async def write(i: Idea, ctx: DurableContext) -> Draft:
        await ctx.sleep(0.05)
        body = await ctx.step("draft", lambda: f"about {i.topic}")
        if extra_step:
            body = await ctx.step("polish", lambda: body.upper())
        await ctx.send("log", Done(value="sent"))
        return Draft(title=i.topic, body=body)

    async def remember(d: Done, ctx: DurableContext) -> Count:
        n = int(await ctx.state.get("n", 0)) + 1
        ctx.state.set("n", n)
        return Count(n=n)

    writer = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    log = agent("log").contracts(input=Done, output=Count).engine(remember).keyed_by(lambda d: d.value)
    critic = agent("critic").contracts(input=Draft, output=Review).engine(lambda d: Review(score=7, notes=d.body))
    checker = agent("checker").contracts(input=Draft, output=Done).engine(lambda d: Done(value=d.title))
    editor = (agent("editor").contracts(input=(Review, Done), output=Verdict)
              .engine(lambda r, c: Verdict(publish=r.score > 5, title=c.value)).needs_approval())
    critic.reacts_to(writer)
    checker.reacts_to(writer)
    editor.reacts_to(critic, checker)
    return make_app([writer, log, critic, checker, editor], name=name)


async def _histories(address: str, workflow_ids: list[str] | None = None) -> list[Any]:
    from temporalio.client import Client

    client = await Client.connect(address)
    histories = []
    async for wf in client.list_workflows():
        if wf.workflow_type.startswith("roost.") and wf.status is not None and wf.status.name != "RUNNING":
            if workflow_ids is None or wf.id in workflow_ids:
                histories.append(await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history())
    return histories


async def _each(histories: list[Any]) -> Any:
    for h in histories:
        yield h


def _replayer() -> Any:
    from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

    from roost.errors import RoostError
    from roost.runtime.temporal._workflow import EntityWorkflow, RunWorkflow

    return Replayer(workflows=[RunWorkflow, EntityWorkflow], workflow_runner=UnsandboxedWorkflowRunner(),
                    workflow_failure_exception_types=[RoostError])


async def test_every_recorded_run_replays_deterministically(make_app: MakeApp, uid: Callable[[str], str],
                                                            temporal_server: Callable[[], Any]) -> None:
    app = _pipeline(make_app)
    for i in range(3):
        handle = await app.start(Idea(topic=f"t{i}"), run_id=uid(f"replay{i}"))
        assert await handle.approval(timeout=10) == "editor"
        await app.aresolve(handle.run_id, "editor", i != 1)
        await handle.result(timeout=20)
    await asyncio.sleep(0.5)  # let the entity workflows' last tasks complete
    histories = await _histories(temporal_server().address)
    assert len(histories) >= 3
    result = await _replayer().replay_workflows(_each(histories), raise_on_replay_failure=False)
    failures = {wid: str(err) for wid, err in result.replay_failures.items()}
    assert not failures, failures


async def test_a_changed_wiring_is_caught_on_replay(make_app: MakeApp, uid: Callable[[str], str],
                                                    temporal_server: Callable[[], Any]) -> None:
    from roost.runtime.temporal._activities import APPS

    app = _pipeline(make_app, name="replaychange")
    handle = await app.start(Idea(topic="x"), run_id=uid("changed"))
    await handle.approval(timeout=10)
    await app.aresolve(handle.run_id, "editor", True)
    await handle.result(timeout=20)
    histories = await _histories(temporal_server().address, [handle.run_id])
    assert len(histories) == 1
    queue = next(q for q, name in APPS if name == "replaychange")
    original = APPS[(queue, "replaychange")]
    changed = _pipeline(make_app, extra_step=True, name="replaychange")
    try:
        APPS[(queue, "replaychange")] = changed.compiled  # the same app name with one step more
        result = await _replayer().replay_workflows(_each(histories), raise_on_replay_failure=False)
    finally:
        APPS[(queue, "replaychange")] = original
    assert handle.run_id in {h.workflow_id for h in histories}
    assert len(result.replay_failures) == 1, "a changed orchestration must not replay silently"
