"""kill -9 the Temporal backend at chosen points of a run, bring it back, and check what survived.

One dev server per module (``temporal server start-dev --db-filename``, so workflows survive its
own kill -9) hosts every run. Each test has its own task queue and run id, runs
tests/crash/temporal_pipeline.py as a worker subprocess (the pipeline of restate_pipeline.py:
same steps, counters outside Temporal, markers and scenarios), starts the run from this process
with a client-only ``TemporalRuntime``, waits (bounded) until the worker is at the kill point,
kills it with SIGKILL (by pid), then starts a worker again and checks against an uninterrupted
run of the same pipeline:

* a step whose activity had completed before the kill never runs again (its counter lines do not
  change), and every step ran to 'done' exactly once;
* nothing was lost: the run completed and every agent produced;
* the outputs equal the uninterrupted run's (up to the run id inside idempotency keys).

Also: kill -9 of the dev server itself during a sleep (restarted on the same database), and two
workers on one task queue where the one running a step is killed and the other finishes the run.

Resume latency (from the new worker polling, or the server back, to the run's next step) is
printed in a summary; only a generous liveness bound is asserted (no timed assertions).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost import App
from roost.runtime import DurableRuntime
from roost.runtime.temporal import TemporalDevServer, TemporalRuntime

from ._harness import MARKER_TIMEOUT, PipelineHarness, harness_on, print_latencies
from ._spans import ENV as SPANS_ENV
from ._spans import check_resumed_spans, read_spans
from .restate_pipeline import APP_NAME, LONG_SLEEP, STEPS

pytestmark = [pytest.mark.crash, pytest.mark.temporal]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "temporal_pipeline.py"
FINISH_TIMEOUT = 40.0
LIVENESS = 10.0
AGENTS = {"plan", "fact", "style", "merge", "publish"}
PLAN_STEPS = {"plan.outline", "plan.research", "plan.draft"}
LATENCIES: dict[str, dict[str, float]] = {}


class Harness(PipelineHarness):
    finish_timeout = FINISH_TIMEOUT

    def __init__(self, root: Path, server: TemporalDevServer, name: str) -> None:
        suffix = os.urandom(3).hex()
        super().__init__(root, f"crash-{name}-{suffix}")
        self.server = server
        self.task_queue = f"crash-{name}-{suffix}"
        self.serving_at: dict[int, float] = {}
        self.history_limit: int | None = None
        """Set: the run continues as new every that many history events (TemporalRuntime(history_limit=))."""

    def start(self, scenario: str, *, block: bool = True) -> subprocess.Popen[bytes]:
        """Start a worker and wait until it polls the run's task queue."""
        proc = self.spawn([str(SCRIPT), self.server.address, self.task_queue, str(self.counter_dir), scenario],
                          scenario, block=block)
        self.wait_until(proc, "the worker polling", lambda: self.marker("serving"))
        self.serving_at[proc.pid] = float(self.marker("serving")[-1].split()[1])
        return proc

    # -- the client (this process) ----------------------------------------------------------------

    def client_runtime(self) -> DurableRuntime:
        return TemporalRuntime(address=self.server.address, task_queue=self.task_queue, serve=False, resolve_wait=1.0,
                               history_limit=self.history_limit)

    def completed_steps(self) -> set[str]:
        """Activity types ('agent.step') whose completion Temporal has recorded in the run's history."""

        async def go(app: App) -> set[str]:
            client = (await app.runtime()).client  # type: ignore[attr-defined]
            done: set[str] = set()
            # Every workflow run of the run (more than one when it continued as new).
            async for wf in client.list_workflows(f"WorkflowId = '{self.run_id}'"):
                history = await client.get_workflow_handle(self.run_id, run_id=wf.run_id).fetch_history()
                types = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                         for e in history.events if e.HasField("activity_task_scheduled_event_attributes")}
                done |= {types[e.activity_task_completed_event_attributes.scheduled_event_id]
                         for e in history.events if e.HasField("activity_task_completed_event_attributes")}
            return done

        return self.client(go)

    def task_completed_after(self, step: str) -> bool:
        """Whether a workflow task completed after the activity ``step`` ('agent.step') did: the
        workflow code that took its result (and made its activation's span) is in the history."""

        async def go(app: App) -> bool:
            client = (await app.runtime()).client  # type: ignore[attr-defined]
            events = (await client.get_workflow_handle(self.run_id).fetch_history()).events
            types = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                     for e in events if e.HasField("activity_task_scheduled_event_attributes")}
            done = [e.event_id for e in events if e.HasField("activity_task_completed_event_attributes")
                    and types[e.activity_task_completed_event_attributes.scheduled_event_id] == step]
            return bool(done) and any(e.event_id > done[0] and e.HasField("workflow_task_completed_event_attributes")
                                      for e in events)

        return self.client(go)

    def closed_at(self) -> float:
        """When Temporal closed the run's workflow."""

        async def go(app: App) -> float:
            runtime = await app.runtime()
            desc = await runtime.client.get_workflow_handle(self.run_id).describe()  # type: ignore[attr-defined]
            assert desc.close_time is not None
            return float(desc.close_time.timestamp())

        return self.client(go)

    def waiting(self) -> list[str]:
        async def go(app: App) -> list[str]:
            return (await app.aget(self.run_id)).record.waiting_on  # type: ignore[no-any-return]

        return self.client(go)

    def approve_when_waiting(self, proc: subprocess.Popen[bytes] | None) -> None:
        self.wait_until(proc, "the run waiting for publish's approval", lambda: self.waiting() == ["publish"],
                        timeout=FINISH_TIMEOUT)
        self.resolve("publish", True)


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-crash")) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, temporal: TemporalDevServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    name = request.node.name.removeprefix("test_")[:24].replace("_", "-")
    yield from harness_on(temporal, lambda: Harness(tmp_path, temporal, name))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, temporal: TemporalDevServer) -> dict[str, Any]:
    h = Harness(tmp_path_factory.mktemp("temporal-baseline"), temporal, "baseline")
    try:
        proc = h.start("none")
        h.submit()
        h.approve_when_waiting(proc)
        return {"result": h.finish(), "dones": h.counts("done")}
    finally:
        h.close()


@pytest.fixture(scope="module", autouse=True)
def latency_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from print_latencies(request, "temporal crash suite", LATENCIES)


def check_recovery(h: Harness, baseline: dict[str, Any], before: dict[str, list[dict[str, Any]]],
                   completed: set[str], result: dict[str, Any]) -> None:
    """The guarantees every scenario checks once the run has finished."""
    assert result == baseline["result"], "the recovered run's outputs differ from an uninterrupted run's"
    assert result["status"] == "completed" and set(result["agent_status"]) == AGENTS
    after = h.counters()
    for step in completed:  # completed before the kill: never executed again
        assert after.get(step) == before.get(step), f"{step} ran again after its result was recorded"
    dones = h.counts("done")
    assert {s: dones.get(s, 0) for s in STEPS} == {s: 1 for s in STEPS}, f"each step must finish exactly once: {dones}"
    assert baseline["dones"] == {s: 1 for s in STEPS}


def test_kill_worker_inside_an_activity(harness: Harness, baseline: dict[str, Any]) -> None:
    h = harness
    proc = h.start("step")
    h.submit()
    h.wait_until(proc, "plan inside 'research'", lambda: h.marker("step"))
    before, completed = h.counters(), h.completed_steps()
    assert "plan.outline" in completed and "plan.research" not in completed
    killed = h.kill(proc)
    again = h.start("none", block=False)
    serving = h.serving_at[again.pid]
    h.wait_until(again, "research started again", lambda: h.first_start(killed), timeout=LIVENESS + 5)
    restart = h.first_start(killed)
    assert restart is not None and restart["step"] == "research" and restart["attempt"] == 2
    LATENCIES["kill_worker_inside_an_activity"] = {"after_kill": restart["at"] - killed,
                                                   "after_worker_up": restart["at"] - serving}
    h.approve_when_waiting(again)
    check_recovery(h, baseline, before, completed, h.finish())
    research = [e for e in h.counters()["plan.research"] if e["event"] == "start"]
    assert len({e["key"] for e in research}) == 1, "the retried step keeps its idempotency key"


def test_kill_worker_during_a_sleep(harness: Harness, baseline: dict[str, Any]) -> None:
    h = harness
    proc = h.start("sleep")
    h.submit()
    h.wait_until(proc, "plan entering its sleep", lambda: h.marker("sleep"))
    due = float(h.marker("sleep")[0].split()[1]) + LONG_SLEEP  # when the timer fires, at the earliest
    time.sleep(0.3)  # the timer is started (the workflow task that starts it completes in ms)
    before, completed = h.counters(), h.completed_steps()
    assert {"plan.outline", "plan.research"} <= completed
    killed = h.kill(proc)
    time.sleep(1.0)
    again = h.start("none", block=False)
    serving = h.serving_at[again.pid]
    h.wait_until(again, "draft after the sleep", lambda: h.first_start(killed), timeout=LIVENESS + 5)
    nxt = h.first_start(killed)
    assert nxt is not None and nxt["step"] == "draft"
    LATENCIES["kill_worker_during_a_sleep"] = {"after_due_and_worker_up": nxt["at"] - max(serving, due)}
    h.approve_when_waiting(again)
    check_recovery(h, baseline, before, completed, h.finish())


def _kill_mid_fan_out(h: Harness, baseline: dict[str, Any], latency: str) -> None:
    """Kill the worker while fact is inside its step and style has finished; a new worker
    starts fact again and the run finishes as an uninterrupted one would."""
    proc = h.start("fanout")
    h.submit()
    h.wait_until(proc, "fact inside its step", lambda: h.marker("fanout"))
    h.wait_until(proc, "style finished", lambda: "style" in h.completed_steps().__str__())
    before, completed = h.counters(), h.completed_steps()
    assert "style.style" in completed and "fact.fact" not in completed
    killed = h.kill(proc)
    again = h.start("none", block=False)
    serving = h.serving_at[again.pid]
    h.wait_until(again, "fact started again", lambda: h.first_start(killed), timeout=LIVENESS + 5)
    restart = h.first_start(killed)
    assert restart is not None and restart["step"] == "fact"
    LATENCIES[latency] = {"after_kill": restart["at"] - killed, "after_worker_up": restart["at"] - serving}
    h.approve_when_waiting(again)
    check_recovery(h, baseline, before, completed, h.finish())


def test_kill_worker_mid_fan_out(harness: Harness, baseline: dict[str, Any]) -> None:
    _kill_mid_fan_out(harness, baseline, "kill_worker_mid_fan_out")


def test_kill_worker_mid_fan_out_of_a_run_that_continues_as_new(harness: Harness, baseline: dict[str, Any]) -> None:
    """The fan-out kill in a run that continues as new every few dozen history events: the
    steps it finished before (in earlier workflow runs, or in the current one) never run again."""
    harness.history_limit = 24
    _kill_mid_fan_out(harness, baseline, "kill_worker_mid_fan_out (continues as new)")
    runs = harness.client(lambda app: _statuses(app, harness.run_id))
    assert runs.count("CONTINUED_AS_NEW") >= 1 and runs.count("COMPLETED") == 1, runs


def test_kill_worker_mid_fan_out_traces_nothing_twice(harness: Harness, baseline: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The mid fan-out kill, with both workers exporting their spans to one file: the new
    worker replays the history of plan's and style's activations and traces neither again; fact
    is traced once, by its retried attempt; one run span, one trace."""
    pytest.importorskip("opentelemetry.sdk")
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPANS_ENV, str(spans_file))
    h = harness
    proc = h.start("fanout")
    h.submit()
    h.wait_until(proc, "fact inside its step", lambda: h.marker("fanout"))
    # Killed once the workflow task that ended style's activation is in the history: its span
    # was made then (a kill between the two is the gap docs/observability.md describes).
    h.wait_until(proc, "style's activation ended in a completed workflow task",
                 lambda: h.task_completed_after("style.style"))
    before, completed = h.counters(), h.completed_steps()
    assert completed == PLAN_STEPS | {"style.style"}, completed
    h.kill(proc)
    assert {s["name"] for s in read_spans(spans_file) if s["name"].startswith("invoke_agent")} == \
        {"invoke_agent plan", "invoke_agent style"}
    again = h.start("none", block=False)
    h.approve_when_waiting(again)
    check_recovery(h, baseline, before, completed, h.finish())
    spans = check_resumed_spans(spans_file, h.run_id, APP_NAME, AGENTS, journaled=completed,
                                interrupted={"fact.fact"}, killed_pid=proc.pid)
    fact = [s["attributes"]["roost.step.attempt"] for s in spans if s["name"] == "step fact"]
    assert fact == [2], fact  # the killed attempt 1 ended no span


async def _statuses(app: App, run_id: str) -> list[str]:
    client = (await app.runtime()).client  # type: ignore[attr-defined]
    return [wf.status.name async for wf in client.list_workflows(f"WorkflowId = '{run_id}'") if wf.status]


def test_kill_worker_waiting_for_approval_resolved_while_down(harness: Harness, baseline: dict[str, Any]) -> None:
    h = harness
    proc = h.start("approval")
    h.submit()
    h.wait_until(proc, "publish waiting for approval", lambda: h.waiting() == ["publish"], timeout=FINISH_TIMEOUT)
    before, completed = h.counters(), h.completed_steps()
    h.kill(proc)
    h.resolve("publish", True)  # no worker: kept in the run's history, applied when one runs
    again = h.start("none", block=False)
    serving = h.serving_at[again.pid]
    result = h.finish()
    finished = h.closed_at()
    assert finished > serving, "the approval was applied by the new worker"
    LATENCIES["kill_worker_waiting_for_approval"] = {"finished_after_worker_up": finished - serving}
    check_recovery(h, baseline, before, completed, result)


def test_kill_dev_server_during_a_sleep(harness: Harness, baseline: dict[str, Any]) -> None:
    h = harness
    proc = h.start("server")
    h.submit()
    h.wait_until(proc, "plan entering its sleep", lambda: h.marker("server"))
    time.sleep(0.3)
    before, completed = h.counters(), h.completed_steps()
    h.server.kill()
    time.sleep(1.5)  # the timer comes due while the server is down
    back = time.time()
    h.server.start()
    h.wait_until(proc, "draft after the sleep", lambda: h.first_start(back), timeout=LIVENESS + 20)
    nxt = h.first_start(back)
    assert nxt is not None and nxt["step"] == "draft"
    LATENCIES["kill_dev_server_during_a_sleep"] = {"after_server_up": nxt["at"] - back}
    h.approve_when_waiting(proc)
    check_recovery(h, baseline, before, completed, h.finish())


def test_two_workers_one_killed_mid_step(harness: Harness, baseline: dict[str, Any]) -> None:
    h = harness
    first = h.start("step")
    second = h.start("step")
    h.submit()
    h.wait_until(None, "a worker inside 'research'", lambda: h.marker("step"), timeout=MARKER_TIMEOUT)
    holder = int(h.marker("step")[0].split()[0])
    victim, survivor = (first, second) if holder == first.pid else (second, first)
    assert victim.pid == holder
    before, completed = h.counters(), h.completed_steps()
    (h.counter_dir / "release").touch()  # the survivor runs the retried step through
    killed = h.kill(victim)
    h.wait_until(survivor, "research started again", lambda: h.first_start(killed), timeout=LIVENESS + 5)
    restart = h.first_start(killed)
    assert restart is not None and restart["pid"] == survivor.pid and restart["attempt"] == 2
    LATENCIES["two_workers_one_killed"] = {"after_kill": restart["at"] - killed}
    h.approve_when_waiting(survivor)
    check_recovery(h, baseline, before, completed, h.finish())
    assert survivor.poll() is None
