"""Runs on Restate are visible in Restate's own tools: the admin SQL and the `restate` CLI show each
run as its workflow invocation (``roost.<app>.run``, keyed by the run id), with each step in its
journal under the step's name, and a failed run as a failed invocation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from roost import App, RunFailedError, agent
from roost.runtime.restate import RestateRuntime
from roost.runtime.restate._server import RestateServer, aadmin_query, find_restate_cli, free_port

pytestmark = pytest.mark.restate


class Q(BaseModel):
    text: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    srv = RestateServer(tmp_path_factory.mktemp("restate-tools"))
    srv.start()
    yield srv
    srv.stop()


def _app(server: RestateServer, name: str) -> App:
    up = agent("upper").contracts(input=Q, output=Q).engine(lambda q: Q(text=q.text.upper()))
    ex = agent("exclaim").contracts(input=Q, output=Q).engine(lambda q: Q(text=q.text + "!")).reacts_to(up)
    runtime = RestateRuntime(ingress=server.ingress_url, admin=server.admin_url,
                             endpoint=f"http://127.0.0.1:{free_port()}")
    return App([up, ex], name=name, runtime=runtime)


async def test_activations_show_in_sys_invocation_and_the_restate_cli(server: RestateServer) -> None:
    app = _app(server, "tools")
    result = await app.arun(Q(text="hi"), run_id="tools-run-1", timeout=30)
    assert result["exclaim"] == Q(text="HI!")
    rows = await aadmin_query(
        server.admin_url,
        "SELECT id, target_service_name, target_service_key, target_handler_name, status FROM sys_invocation "
        "WHERE target_service_key = 'tools-run-1'")
    runs = [r for r in rows if (r["target_service_name"], r["target_handler_name"]) == ("roost.tools.run", "run")]
    assert len(runs) == 1 and runs[0]["status"] == "completed", rows
    assert len(rows) == 1, f"a static graph runs in one invocation: {rows}"
    assert all(r["status"] == "completed" for r in rows)
    journal = await aadmin_query(
        server.admin_url,
        f"SELECT entry_type, name FROM sys_journal WHERE id = '{runs[0]['id']}' AND entry_type = 'Command: Run'")
    steps = sorted(str(r["name"]).split("@")[0] for r in journal)
    assert steps == ["exclaim", "upper"], journal  # each agent's step, journaled in the run's invocation

    cli = find_restate_cli(install=True, root=Path.cwd())
    env = {**os.environ, "RESTATE_ADMIN_URL": server.admin_url}
    proc = await asyncio.create_subprocess_exec(
        str(cli), "invocations", "list", "--all", "--service", "roost.tools.run",
        env={**env, "COLUMNS": "250"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    listing = stdout.decode()
    assert "roost.tools.run" in listing and "tools-run-1" in listing, listing[:800]
    await app.aclose()


async def test_a_failed_agent_is_a_terminal_failure_in_restate_and_a_roost_error_for_users(server: RestateServer) -> None:
    def broken(q: Q) -> Q:
        raise ValueError("no good")

    bad = agent("bad").contracts(input=Q, output=Q).engine(broken).retry(max_attempts=2, initial_interval=0.01)
    app = App([bad], name="tools-fail",
              runtime=RestateRuntime(ingress=server.ingress_url, admin=server.admin_url,
                                     endpoint=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(RunFailedError) as info:  # a roost error, never a restate.* one
        await app.arun(Q(text="x"), run_id="tools-fail-1", timeout=30)
    assert (info.value.agent, info.value.step, info.value.attempts) == ("bad", "bad", 2)
    assert "no good" in info.value.error_message
    rows = await aadmin_query(
        server.admin_url,
        "SELECT status, completion_result, completion_failure FROM sys_invocation "
        "WHERE target_service_name = 'roost.tools-fail.run' AND target_service_key = 'tools-fail-1' "
        "AND target_handler_name = 'run'")
    assert rows and rows[0]["status"] == "completed" and rows[0]["completion_result"] == "failure"
    assert "no good" in rows[0].get("completion_failure", "")
    await app.aclose()
