"""kill -9 a Temporal script (client and worker in one process, its step functions defined in the
script run as ``__main__``) while two concurrent branches of one activation are both inside their
last step (tests/crash/test_crash_branches.py does this on the embedded runtime,
test_crash_branches_restate.py on Restate).

One dev server per module (``TemporalDevServer``: SQLite database in a tmp dir, loopback, free
port) hosts every run. Each test has its own task queue and run id and runs
tests/crash/branches_temporal_pipeline.py as a script (``python branches_temporal_pipeline.py``),
so the step function ``work`` exists only in module ``__main__``: roost must make it a real
activity found again through the app's file, not a local activity (whose finished results are
lost when the worker dies before its workflow task completes: issue 11). That process starts the
run and serves it. ``fork`` runs two branches with ``asyncio.gather``, three steps each; every
step is an activity of type ``fork.work``.

The killing test waits until both branches are inside their last step, checks that Temporal's
history holds the completions of the first two steps of each, kills the process with SIGKILL (by
pid), runs the script again with the same run id (it attaches to the run and serves it) and checks,
for each delay profile of the pipeline (several interleavings of the branches), a few times:

* the run completed with each branch's own results (the output of an uninterrupted run);
* a step finished before the kill never ran again: its counter (fsync'ed lines outside Temporal)
  shows exactly one start and one done, by the killed process; the two steps running at the kill
  ran again once, in the new process, and were done once in all; idempotency keys are stable;
* through Temporal's history: every step was scheduled once as a real activity
  (``ActivityTaskScheduled``, type ``fork.work``, found by a ``script`` reference to the pipeline
  file), completed once, the interrupted ones on their second attempt (a server-side retry, not a
  new scheduling), and no local-activity marker (``MarkerRecorded``) is in the history.

Resume latency (kill, and the new process's start, to the first step it runs) is printed in a
summary at the end of the module; only generous liveness bounds are asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.runtime.temporal import TemporalDevServer

from ._branches import DELAYS
from ._harness import WorkerHarness, harness_on, print_latencies

pytestmark = [pytest.mark.crash, pytest.mark.temporal]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "branches_temporal_pipeline.py"
ACTIVITY_TYPE = "fork.work"
EXPECTED = {"a": ["A0<>", "A1<A0>", "A2<A0+A1>"], "b": ["B0<>", "B1<B0>", "B2<B0+B1>"]}
STEPS = sorted(v.split("<")[0] for vs in EXPECTED.values() for v in vs)
FIRST_TWO = ["A0", "A1", "B0", "B1"]
LAST = ["A2", "B2"]
FINISH_TIMEOUT = 90.0  # seconds for a (restarted) script to finish the run: a liveness bound only
KNOWN_EXIT_CRASH = "PyGILState_Release"  # issue 11, 'Scripts crash on exit' (after the result is printed)
LATENCIES: dict[str, dict[str, float]] = {}
EXIT_CRASHES: list[str] = []


class Harness(WorkerHarness):
    def __init__(self, root: Path, server: TemporalDevServer, name: str) -> None:
        suffix = os.urandom(3).hex()
        super().__init__(root, f"branches-{name}-{suffix}")
        self.server = server
        self.task_queue = f"branches-{name}-{suffix}"
        self.spawned_at: dict[int, float] = {}

    def start(self, scenario: str, *, block: bool = True, profile: str = "mixed",
              style: str = "script") -> subprocess.Popen[bytes]:
        """Run the script (client and worker) for this test's run id and task queue; ``style``
        ``closure`` makes its steps lambdas."""
        spawned = time.time()
        proc = self.spawn([str(SCRIPT), self.server.address, self.task_queue, self.run_id, str(self.counter_dir),
                           scenario, profile], scenario, block=block, extra_env={"ROOST_CRASH_STEP_STYLE": style})
        self.spawned_at[proc.pid] = spawned
        self.wait_marker(proc, "started")
        return proc

    def result(self, proc: subprocess.Popen[bytes], timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
        """Wait (bounded) for the script to end the run; its JSON result line."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            pytest.fail(f"the script did not finish the run within {timeout} s:\n{self.stderr(proc)}")
        lines = self.logs[proc.pid][0].read_text().strip().splitlines()
        stderr = self.stderr(proc)
        assert lines, f"the script printed no result (rc {proc.returncode}):\n{stderr}"
        if proc.returncode != 0:
            # Known, separate bug (issue 11, 'Clean exits'): the SDK's native threads can abort the
            # interpreter at shutdown, after the result was printed. Recorded, not this test's subject.
            assert KNOWN_EXIT_CRASH in stderr, f"the script failed ({proc.returncode}):\n{stderr}"
            EXIT_CRASHES.append(f"{self.run_id}: rc {proc.returncode}")
            warnings.warn(f"the script crashed on exit after printing its result (rc {proc.returncode}, "
                          f"{KNOWN_EXIT_CRASH}; issue 11)", stacklevel=2)
        assert "Nondeterminism" not in stderr and "TMPRL1100" not in stderr, stderr
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    # -- Temporal's history of the run (read through the SDK's client) ----------------------------

    def history(self) -> list[Any]:
        from temporalio.client import Client

        async def go() -> list[Any]:
            client = await Client.connect(self.server.address)
            history = await client.get_workflow_handle(self.run_id).fetch_history()
            return list(history.events)

        return asyncio.run(go())

    def activities(self) -> dict[str, Any]:
        """What the history says about the run's steps. Per step tag ('A1'): the activities it was
        scheduled in (event id, activity type, the reference sent for the function), the attempts
        those activities were started on and the step's outcomes in their results. A step travels
        alone (the request is the step's) or with others of its kind in one batch activity (the
        request holds ``batch``, the result ``results``, in the same order). Also the number of
        marker events (local activities) and of workflow completions."""
        from temporalio.api.enums.v1 import EventType

        scheduled: dict[int, list[str]] = {}  # event id -> the tags of the steps it carries
        steps: dict[str, dict[str, list[Any]]] = {}
        markers = completions = 0
        for e in self.history():
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = e.activity_task_scheduled_event_attributes
                req = json.loads(attrs.input.payloads[0].data)
                items = req["batch"] if "batch" in req else [req]
                scheduled[e.event_id] = [f"{item['args'][0]}{item['args'][1]}" for item in items]
                for tag, item in zip(scheduled[e.event_id], items, strict=True):
                    step = steps.setdefault(tag, {"scheduled": [], "started": [], "completed": []})
                    step["scheduled"].append((e.event_id, attrs.activity_type.name, item.get("ref")))
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attrs = e.activity_task_started_event_attributes
                for tag in scheduled[attrs.scheduled_event_id]:
                    steps[tag]["started"].append(attrs.attempt)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                attrs = e.activity_task_completed_event_attributes
                result = json.loads(attrs.result.payloads[0].data)
                tags = scheduled[attrs.scheduled_event_id]
                outcomes = result["results"] if "results" in result else [result]
                for tag, outcome in zip(tags, outcomes, strict=True):
                    steps[tag]["completed"].append(outcome)
            elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                markers += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                completions += 1
        return {"steps": steps, "markers": markers, "completions": completions}

    def completed_steps(self) -> dict[str, str]:
        """Step tag -> value of every step whose activity completion Temporal has recorded."""
        return {tag: s["completed"][-1]["v"] for tag, s in self.activities()["steps"].items() if s["completed"]}

    def check_history(self, retried: tuple[str, ...] = ()) -> None:
        """Every step was scheduled once, in a real activity of type fork.work, found through the
        script's file, and completed once with its value; the activity of a step running at the
        kill was started on its second attempt (a retry by the server, not a new scheduling), the
        others on their first; no local activities (marker events)."""
        seen = self.activities()
        steps = seen["steps"]
        assert sorted(steps) == STEPS, f"steps scheduled: {sorted(steps)}"
        values = {v.split("<")[0]: v for vs in EXPECTED.values() for v in vs}
        for tag, step in steps.items():
            assert len(step["scheduled"]) == 1, f"{tag} was scheduled more than once: {step['scheduled']}"
            _, atype, ref = step["scheduled"][0]
            assert atype == ACTIVITY_TYPE, f"{tag} was scheduled as {atype!r}, not {ACTIVITY_TYPE!r}"
            assert ref is not None and (ref["kind"], ref["qualname"], os.path.realpath(ref["file"])) == (
                "script", "work", str(SCRIPT)), f"{tag} was not found through the script: {ref}"
            assert [c.get("v") for c in step["completed"]] == [values[tag]], (tag, step["completed"])
            attempt = 2 if tag in retried else 1
            assert step["started"] == [attempt], f"{tag}'s activity was started on attempts {step['started']}"
        assert seen["markers"] == 0, f"{seen['markers']} marker events (local activities) in the run's history"
        assert seen["completions"] == 1


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-branches")) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, temporal: TemporalDevServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    name = request.node.name.removeprefix("test_").replace("[", "-").replace("]", "")[-32:].strip("-_")
    yield from harness_on(temporal, lambda: Harness(tmp_path, temporal, name))


@pytest.fixture(scope="module", autouse=True)
def latency_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from print_latencies(request, "temporal parallel-branch crash (script as __main__)", LATENCIES)
    if EXIT_CRASHES:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"scripts that crashed on exit after their result ({KNOWN_EXIT_CRASH}): {EXIT_CRASHES}")


def test_uninterrupted(harness: Harness) -> None:
    h = harness
    proc = h.start("none")
    assert h.result(proc) == {"status": "completed", "outputs": {"fork": EXPECTED}}
    counters = h.counters()
    assert h.counts("start") == h.counts("done") == {s: 1 for s in STEPS}
    assert {e["module"] for events in counters.values() for e in events} == {"__main__"}
    h.check_history()


@pytest.mark.parametrize("attempt", range(2))
@pytest.mark.parametrize("profile", sorted(DELAYS))
def test_kill_with_both_branches_in_their_last_step(harness: Harness, profile: str, attempt: int) -> None:
    h = harness
    proc = h.start("last", profile=profile)
    h.wait_marker(proc, "last-A", "last-B")
    # A branch's last step is scheduled only once the workflow has seen its second step complete:
    # the completions of the first two steps of each branch are in the history now.
    first_two = {tag: v for vs in EXPECTED.values() for v in vs if (tag := v.split("<")[0]) in FIRST_TWO}
    assert h.completed_steps() == first_two
    killed_at = h.kill(proc)
    before = h.counters()
    for name in LAST:
        assert [(e["event"], e["attempt"]) for e in before[name]] == [("start", 1)], (name, before[name])
    assert h.completed_steps() == first_two, "the history changed while the process was being killed"

    new = h.start("none", block=False, profile=profile)
    h.wait_until(new, "a step starting again", lambda: h.first_start(killed_at, new.pid) is not None,
                 timeout=FINISH_TIMEOUT)
    first = h.first_start(killed_at, new.pid)
    assert first is not None
    final = h.result(new)
    LATENCIES[f"kill, both branches in their last step [{profile}-{attempt}]"] = figures = {
        "kill_to_next_step": first["at"] - killed_at,
        "spawn_to_next_step": first["at"] - h.spawned_at[new.pid],
    }
    print(", ".join(f"{k}={v:.3f}s" for k, v in figures.items()))

    assert final == {"status": "completed", "outputs": {"fork": EXPECTED}}, "each branch got its own results"
    counters, starts, dones = h.counters(), h.counts("start"), h.counts("done")
    assert sorted(counters) == STEPS
    for name in FIRST_TWO:  # finished before the kill: never run again
        assert counters[name] == before[name], f"{name} ran again after it had finished: {counters[name]}"
        assert starts[name] == dones[name] == 1, counters[name]
        assert {e["pid"] for e in counters[name]} == {proc.pid}, counters[name]
    for name in LAST:  # running at the kill: run again once, by the new process, done once in all
        assert starts[name] == 2 and dones[name] == 1, counters[name]
        assert [(e["event"], e["pid"]) for e in counters[name]] == [
            ("start", proc.pid), ("start", new.pid), ("done", new.pid)], counters[name]
        # docs/runtime.md: on Temporal the attempt (current_step().attempt) is Temporal's, durable.
        assert [e["attempt"] for e in counters[name]] == [1, 2, 2], (
            f"{name}: the re-run after the kill must see attempt 2 (Temporal's attempt), not restart at 1: "
            f"{counters[name]}")
    for name, events in counters.items():  # one idempotency key per step, stable across the restart
        assert len({e["key"] for e in events}) == 1, (name, events)
        assert {e["module"] for e in events} == {"__main__"}, "the step ran from the script run as __main__"
    assert len({events[0]["key"] for events in counters.values()}) == len(STEPS)
    h.check_history(retried=tuple(LAST))



def closure_activities(h: Harness) -> dict[str, list[dict[str, Any]]]:
    """Per step tag, from the history: the activities it was scheduled in, each with its task
    queue, whether it carried a function reference, the attempts it was started on, its outcome
    (value or timeout) — for steps that are lambdas, whose requests carry no arguments (the tag is
    read from the value of the step's completion, per idempotency key)."""
    from temporalio.api.enums.v1 import EventType

    by_event: dict[int, dict[str, Any]] = {}
    for e in h.history():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            req = json.loads(attrs.input.payloads[0].data)
            by_event[e.event_id] = {"key": req["key"], "queue": attrs.task_queue.name, "ref": req.get("ref"),
                                    "local": "local" in req, "started": [], "outcome": None}
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            by_event[e.activity_task_started_event_attributes.scheduled_event_id]["started"].append(
                e.activity_task_started_event_attributes.attempt)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = e.activity_task_completed_event_attributes
            by_event[attrs.scheduled_event_id]["outcome"] = json.loads(attrs.result.payloads[0].data)["v"]
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            by_event[e.activity_task_timed_out_event_attributes.scheduled_event_id]["outcome"] = "timed out"
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            raise AssertionError("a marker (local activity) is in the run's history")
    per_key: dict[str, list[dict[str, Any]]] = {}
    for activity in by_event.values():
        per_key.setdefault(activity["key"], []).append(activity)
    out: dict[str, list[dict[str, Any]]] = {}
    for activities in per_key.values():
        values = [a["outcome"] for a in activities if a["outcome"] not in (None, "timed out")]
        assert len(values) == 1, f"one step completed {len(values)} times: {activities}"
        out[values[0].split("<")[0]] = activities
    return out


def test_kill_with_closure_steps(harness: Harness) -> None:
    """The same kill with the steps lambdas (functions only the killed process held): they are
    real activities on that process's own task queue, so the steps it finished are in the history
    and never run again; the two it was running are scheduled again on the new process's queue
    (after PICKUP_TIMEOUT) and run there once."""
    h = harness
    proc = h.start("last", style="closure")
    h.wait_marker(proc, "last-A", "last-B")
    killed_at = h.kill(proc)
    before = h.counters()
    new = h.start("none", block=False, style="closure")
    final = h.result(new)
    assert final == {"status": "completed", "outputs": {"fork": EXPECTED}}, "each branch got its own results"
    counters, starts, dones = h.counters(), h.counts("start"), h.counts("done")
    assert sorted(counters) == STEPS
    for name in FIRST_TWO:  # finished before the kill: never run again
        assert counters[name] == before[name], f"{name} ran again after it had finished: {counters[name]}"
        assert starts[name] == dones[name] == 1 and {e["pid"] for e in counters[name]} == {proc.pid}
    for name in LAST:  # running at the kill: run again once, by the new process
        assert [(e["event"], e["pid"]) for e in counters[name]] == [
            ("start", proc.pid), ("start", new.pid), ("done", new.pid)], counters[name]
    first = h.first_start(killed_at, new.pid)
    assert first is not None
    LATENCIES["kill, closure steps in their last step"] = {"kill_to_next_step": first["at"] - killed_at}
    seen = closure_activities(h)
    assert sorted(seen) == STEPS
    for tag, activities in seen.items():
        assert all(a["local"] and a["ref"] is None for a in activities), activities
        if tag in FIRST_TWO:
            assert len(activities) == 1 and activities[0]["started"] == [1], (tag, activities)
        else:  # the killed process's queue, then (timed out there) the new process's queue
            assert [a["outcome"] == "timed out" for a in activities] == [True, False], (tag, activities)
            assert activities[0]["queue"] != activities[1]["queue"], (tag, activities)
            assert all(a["queue"].startswith(f"{h.task_queue}@") for a in activities), activities
