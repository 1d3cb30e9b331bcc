"""Runs on Temporal are visible in Temporal's own tools: ``temporal workflow list/show`` show each
run under its app (workflow type ``roost.<app>``) and run id (workflow id), with its activities
named ``<agent>.<step>``; a failed run is a failed workflow there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from roost import App, DurableContext, RunFailedError, TerminalError, agent
from roost.runtime.temporal import TemporalDevServer, TemporalRuntime
from roost.runtime.temporal._server import find_temporal

pytestmark = [pytest.mark.temporal, pytest.mark.asyncio(loop_scope="module")]


class Q(BaseModel):
    text: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    srv = TemporalDevServer(tmp_path_factory.mktemp("temporal-tools"))
    srv.start()
    yield srv
    srv.stop()


def _app(server: TemporalDevServer, name: str, fail: bool = False) -> App:
    async def shout(q: Q, ctx: DurableContext) -> Q:
        text = await ctx.step("upper", _upper, q.text)
        return Q(text=await ctx.step("exclaim", _exclaim, text))

    def final(q: Q) -> Q:
        if fail:
            raise TerminalError("refused")
        return q

    up = agent("shout").contracts(input=Q, output=Q).engine(shout)
    done = agent("final").contracts(input=Q, output=Q).engine(final).reacts_to(up)
    return App([up, done], name=name, runtime=TemporalRuntime(address=server.address))


def _upper(text: str) -> str:
    return text.upper()


def _exclaim(text: str) -> str:
    return text + "!"


async def _temporal(server: TemporalDevServer, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(find_temporal()), *args, "--address", server.address, "--output", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_runs_and_activities_show_in_the_temporal_cli(server: TemporalDevServer) -> None:
    async with _app(server, "tools") as app:
        result = await app.arun(Q(text="hi"), run_id="tools-run-1", timeout=30)
    assert result["final"] == Q(text="HI!")

    listing = await _temporal(server, "workflow", "list", "--query", "WorkflowType = 'roost.tools'")
    runs = json.loads(listing)
    ids = {r["execution"]["workflowId"]: r for r in runs}
    assert "tools-run-1" in ids
    assert ids["tools-run-1"]["type"]["name"] == "roost.tools"
    assert ids["tools-run-1"]["status"] in ("WORKFLOW_EXECUTION_STATUS_COMPLETED", 2)

    shown = await _temporal(server, "workflow", "show", "--workflow-id", "tools-run-1")
    assert "roost.tools" in shown
    # Steps are activities named agent.step (a plain-function agent's step is named after it).
    for name in ("shout.upper", "shout.exclaim", "final.final"):
        assert f'"{name}"' in shown, f"activity {name} not in the history"


async def test_a_failed_run_is_a_failed_workflow(server: TemporalDevServer) -> None:
    async with _app(server, "toolsfail", fail=True) as app:
        with pytest.raises(RunFailedError, match="refused"):
            await app.arun(Q(text="hi"), run_id="tools-fail-1", timeout=30)
    described = json.loads(await _temporal(server, "workflow", "describe", "--workflow-id", "tools-fail-1"))
    status = described["workflowExecutionInfo"]["status"]
    assert status in ("WORKFLOW_EXECUTION_STATUS_FAILED", 3)
