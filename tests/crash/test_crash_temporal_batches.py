"""kill -9 a Temporal worker while it runs a fan-out's steps in batch activities, and check the
guarantee docs/runtime.md gives them: a step in a batch is durable once a heartbeat of its batch
has carried its outcome, or the batch completed; a batch whose worker died is retried and runs
only the steps whose outcome no heartbeat had carried yet.

The worker is tests/crash/batch_temporal_pipeline.py, a subprocess: ``split`` makes N = 120
items, ``work`` runs one step per item (two batch activities, of 100 and 20 steps), ``total``
gathers. Every step appends fsync'ed 'start' and 'done' lines (with its process id) to a file
outside Temporal. The test process starts the run, reads the batches' heartbeat details from the
server (``describe``: the outcomes the server holds for each pending batch), kills the worker
with SIGKILL at a point chosen by markers and release files, waits until the server has timed
the killed attempts out (from then on, nothing of the dead process can reach it), reads the
heartbeat details again (the *carried* items), starts a new worker and checks:

* every item whose outcome a heartbeat had carried ran exactly once, in the killed worker;
* every other item ran again in the new worker, exactly once there (its attempt going on from
  the batch's), after at most one run in the killed worker, interrupted or finished: at most twice;
* nothing was lost: the run completed, every item's output is right, ``split`` and ``total`` ran
  once, and the history holds exactly the two batch activities, each completed by a retry.

Kill points: (a) ``mid``: a third of the items finished and carried, a third finished just before
the kill (most likely not carried yet), a third still inside their steps; (a') the same, then a
second kill, of the worker the retried batches went to, before they ran a step or heartbeated
(what was carried survives it); (b) ``end``: every step of both batches finished, the last ones
after the batches' last heartbeat, and the batches' functions have returned but Temporal has not
been told (the worker holds there: otherwise a window of milliseconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client

from roost import RunHandle
from roost.runtime.temporal import TemporalDevServer, TemporalRuntime

from ._harness import WorkerHarness
from .batch_temporal_pipeline import build_app, expected_out, group

pytestmark = [pytest.mark.crash, pytest.mark.temporal]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "batch_temporal_pipeline.py"
N = 120
BATCHES = 2  # 100 + 20: the runtime's BATCH_SIZE is 100
STEP = "work.work"
FINISH_TIMEOUT = 60.0
WAIT = 30.0  # bound on each wait for a kill point (generous: the machine may be loaded)
T = TypeVar("T")


class Harness(WorkerHarness):
    def __init__(self, root: Path, server: TemporalDevServer, name: str) -> None:
        suffix = os.urandom(3).hex()
        super().__init__(root, f"crash-batch-{name}-{suffix}")
        self.server = server
        self.task_queue = f"crash-batch-{name}-{suffix}"
        self.runner = asyncio.Runner()
        self.app = build_app(TemporalRuntime(address=server.address, task_queue=self.task_queue, serve=False))
        self._client: Client | None = None

    def start(self, scenario: str, *, block: bool = True) -> subprocess.Popen[bytes]:
        """Start a worker and wait until it polls the run's task queue."""
        proc = self.spawn([str(SCRIPT), self.server.address, self.task_queue, str(self.counter_dir), scenario],
                          scenario, block=block)
        self.wait_until(proc, "the worker polling", lambda: self.marker("serving"), timeout=WAIT)
        return proc

    def close(self) -> None:
        super().close()
        if self._client is not None:
            self.run(self.app.aclose())
        self.runner.close()

    # -- the client (this process, one event loop for the whole test) -----------------------------

    def run(self, coro: Awaitable[T]) -> T:
        async def go() -> T:
            return await coro

        return self.runner.run(go())

    def client(self) -> Client:
        if self._client is None:
            self._client = self.run(self.app.runtime()).client  # type: ignore[attr-defined]
        return self._client

    def submit(self) -> None:
        self.client()
        self.run(self.app.start({"n": N}, self.run_id))

    def finish(self) -> Any:
        return self.run(RunHandle(self.app, self.run(self.app.runtime()), self.run_id).result(FINISH_TIMEOUT))

    def batches(self) -> list[tuple[int, int, dict[str, Any]]]:
        """(state, attempt, heartbeat details) of each pending batch activity, as the server holds them."""

        async def go() -> list[tuple[int, int, dict[str, Any]]]:
            client = self.client()
            desc = await client.get_workflow_handle(self.run_id).describe()
            out: list[tuple[int, int, dict[str, Any]]] = []
            for pa in desc.raw_description.pending_activities:
                if pa.activity_type.name != STEP:
                    continue
                details = await client.data_converter.decode(pa.heartbeat_details.payloads)
                out.append((int(pa.state), pa.attempt, details[0] if details else {}))
            return out

        return self.run(go())

    def carried(self) -> set[int]:
        """The items whose outcome a heartbeat of their batch has brought to the server."""
        return {o["v"]["i"] for _, _, details in self.batches() for o in details.values() if "v" in o}

    def batch_history(self) -> list[tuple[int, bool]]:
        """Per batch activity the history schedules: (attempt that completed it, completed at all)."""

        async def go() -> list[tuple[int, bool]]:
            events = (await self.client().get_workflow_handle(self.run_id).fetch_history()).events
            scheduled = {e.event_id for e in events if e.HasField("activity_task_scheduled_event_attributes")
                         and e.activity_task_scheduled_event_attributes.activity_type.name == STEP}
            started = {e.event_id: e.activity_task_started_event_attributes.attempt for e in events
                       if e.HasField("activity_task_started_event_attributes")
                       and e.activity_task_started_event_attributes.scheduled_event_id in scheduled}
            completed = {e.activity_task_completed_event_attributes.scheduled_event_id for e in events
                         if e.HasField("activity_task_completed_event_attributes")}
            by_scheduled = {e.activity_task_started_event_attributes.scheduled_event_id: started[e.event_id]
                            for e in events if e.event_id in started}
            return [(by_scheduled.get(s, 0), s in completed) for s in sorted(scheduled)]

        return self.run(go())

    # -- the counters (outside Temporal) ---------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        path = self.counter_dir / "steps.log"
        lines = path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only
        return [e for e in (json.loads(line) for line in lines) if e["run"] == self.run_id]

    def items(self, event: str, pid: int) -> set[int]:
        return {e["i"] for e in self.events() if e["event"] == event and e["pid"] == pid and e["i"] >= 0}

    def kill_and_settle(self, proc: subprocess.Popen[bytes]) -> set[int]:
        """SIGKILL the worker, wait until the server has timed out every batch attempt it ran (a
        heartbeat still on its way can no longer land), and return the carried items then."""
        self.kill(proc)
        self.wait_until(None, "the server timing out the killed batches (heartbeat timeout 2 s)",
                        lambda: all(state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
                                    for state, _, _ in self.batches()), timeout=WAIT)
        assert len(self.batches()) == BATCHES, "both batches are pending: neither completed before the kill"
        return self.carried()


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-crash-batches")) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, temporal: TemporalDevServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(tmp_path, temporal, request.node.name.removeprefix("test_")[:24].replace("_", "-"))
    try:
        yield h
    finally:
        h.close()


def check_recovery(h: Harness, killed: int, again: int, carried: set[int]) -> dict[int, list[dict[str, Any]]]:
    """The guarantees both kill points check once the run has finished; each item's events."""
    result = h.finish()
    assert result.status == "completed"
    outs = sorted(result.all("work"), key=lambda o: o.i)
    assert [(o.i, o.square) for o in outs] == [expected_out(i) for i in range(N)], "every item's output is right"
    assert result["total"].squares == [i * i for i in range(N)]
    events = h.events()
    per: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        per.setdefault(e["i"], []).append(e)
    assert [(e["event"], e["pid"]) for i in (-1, -2) for e in per[i]] == \
        [("start", killed), ("done", killed), ("start", again), ("done", again)], "split and total ran once"
    keys = {o.i: o.key for o in outs}
    for i in range(N):
        mine = per.get(i, [])
        first = [e["event"] for e in mine if e["pid"] == killed]
        second = [e for e in mine if e["pid"] == again]
        assert len(mine) == len(first) + len(second), f"item {i}: only the two workers ran steps"
        assert first[:1] == ["start"] and first in (["start"], ["start", "done"]), f"item {i} in the killed worker: {first}"
        assert {e["key"] for e in mine} == {keys[i]}, f"item {i}: every run of its step has the same idempotency key"
        if i in carried:
            assert first == ["start", "done"] and not second, f"item {i}, carried by a heartbeat, ran again: {mine}"
        else:
            assert [e["event"] for e in second] == ["start", "done"], f"item {i}, not carried, must run again once: {mine}"
            assert second[0]["attempt"] > 1, f"item {i}'s attempt goes on from its retried batch's: {second}"
    history = h.batch_history()
    assert len(history) == BATCHES and all(done and attempt > 1 for attempt, done in history), \
        f"the two batch activities, each completed by a retry, and no other: {history}"
    return per


MID_FREE = {i for i in range(N) if group(i, "mid") is None}
MID_LATE = {i for i in range(N) if group(i, "mid") == "b"}
MID_HELD = {i for i in range(N) if group(i, "mid") == "c"}


def kill_mid_batch(h: Harness) -> tuple[subprocess.Popen[bytes], set[int]]:
    """Kill -9 the worker with a third of the items carried by heartbeats, a third just finished
    (most likely not carried yet: their batch heartbeats every 0.5 s, at most once a second
    reaching the server; not asserted, it is a race) and a third inside their steps; the killed
    worker and the carried items."""
    proc = h.start("mid")
    h.submit()
    h.wait_until(proc, "every item started", lambda: len(h.items("start", proc.pid)) == N, timeout=WAIT)
    h.wait_until(proc, "the free third done and carried by heartbeats", lambda: MID_FREE <= h.carried(),
                 timeout=WAIT)
    assert h.items("done", proc.pid) == MID_FREE
    (h.counter_dir / "release-b").touch()
    h.wait_until(proc, "the second third done", lambda: MID_LATE <= h.items("done", proc.pid), timeout=WAIT)
    carried = h.kill_and_settle(proc)
    assert MID_FREE <= carried and not carried & MID_HELD, carried
    return proc, carried


def check_interrupted(h: Harness, per: dict[int, list[dict[str, Any]]], killed: int, again: int) -> None:
    for i in MID_HELD:  # killed inside the step: one 'start' there, the whole step after
        assert [(e["event"], e["pid"]) for e in per[i]] == [("start", killed), ("start", again), ("done", again)], per[i]


def test_kill_worker_mid_batch(harness: Harness) -> None:
    """(a) Kill -9 mid-batch; a new worker finishes the run."""
    h = harness
    proc, carried = kill_mid_batch(h)
    again = h.start("mid", block=False)
    per = check_recovery(h, proc.pid, again.pid, carried)
    check_interrupted(h, per, proc.pid, again.pid)
    assert len(h.items("start", again.pid)) == N - len(carried)


def test_kill_worker_mid_batch_then_its_retry_before_it_heartbeats(harness: Harness) -> None:
    """(a) then a second kill -9: of the worker the retried batches went to, before they ran any
    step or heartbeat. The server keeps what the first attempt's heartbeats carried."""
    h = harness
    proc, carried = kill_mid_batch(h)
    second = h.start("retry")
    h.wait_until(second, "both retried batches held before running anything",
                 lambda: sum(int(line.split()[1]) for line in h.marker("batch-retry")) >= N, timeout=WAIT)
    assert h.kill_and_settle(second) == carried, "a retry that never heartbeated loses nothing carried"
    assert not [e for e in h.events() if e["pid"] == second.pid]
    again = h.start("mid", block=False)
    per = check_recovery(h, proc.pid, again.pid, carried)
    check_interrupted(h, per, proc.pid, again.pid)
    assert all(attempt > 2 for attempt, _ in h.batch_history()), "the third attempts completed the batches"


def test_kill_worker_after_the_batches_last_steps_before_they_complete(harness: Harness) -> None:
    """(b) Kill -9 once every step of both batches finished, the last ones after the batches' last
    heartbeat, with the batch functions returned but the activities not reported complete."""
    h = harness
    early = {i for i in range(N) if group(i, "end") is None}
    late = set(range(N)) - early
    proc = h.start("end")
    h.submit()
    h.wait_until(proc, "every item started", lambda: len(h.items("start", proc.pid)) == N, timeout=WAIT)
    h.wait_until(proc, "the early items done and carried", lambda: early <= h.carried(), timeout=WAIT)
    (h.counter_dir / "release-b").touch()
    h.wait_until(proc, "both batches returned, held before completing",
                 lambda: sum(int(line.split()[1]) for line in h.marker("batch-end")) == N, timeout=WAIT)
    assert h.items("done", proc.pid) == set(range(N)), "every step had finished before the kill"
    carried = h.kill_and_settle(proc)
    assert early <= carried
    # The late items finish within milliseconds of each other, and their batch returns at once:
    # a heartbeat (every 0.5 s) cannot fall after the last of them and before the return.
    assert late - carried, "some steps finished after their batch's last heartbeat"
    again = h.start("end", block=False)
    per = check_recovery(h, proc.pid, again.pid, carried)
    for i in late - carried:  # finished, unheartbeated: run again, whole
        assert [(e["event"], e["pid"]) for e in per[i]] == \
            [("start", proc.pid), ("done", proc.pid), ("start", again.pid), ("done", again.pid)], per[i]
