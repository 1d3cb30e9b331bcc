"""kill -9 the Restate serving process while two concurrent branches of one activation are both
inside their last step (tests/crash/test_crash_branches.py does this on the embedded runtime).

One restate-server (module scope, its data in a tmp dir, free loopback ports) hosts every run.
Each test keeps one endpoint port (a restarted process serves the same URI and code version),
runs tests/crash/branches_restate_pipeline.py there as a serving subprocess and starts a run from
this process with a client-only ``RestateRuntime``. The run is one Workflow invocation
(``roost.crashbranches.run``, keyed by the run id); ``fork`` runs two branches with
``asyncio.gather``, three steps each, every step one ``ctx.run`` in that invocation's journal named
``work@fork:entry/<branch>:<n>`` (branch ``0`` is A, ``1`` is B). The killing test waits until
both branches are inside their last step and Restate has journaled the results of the first two
steps of each, kills the process with SIGKILL (by pid), starts it again (not holding) and checks
(for each delay profile of the pipeline, so for several interleavings of the two branches in the
journal, each a few times):

* the journal (admin SQL: ``sys_journal`` joined with ``sys_invocation``) held exactly those four
  results at the kill, each under its own branch's name with its own branch's value, and after the
  restart each ``ctx.run`` was issued once in all (the replay matched the journal: no RT0016
  mismatch in the server's log) and the four values are unchanged;
* a step journaled before the kill never ran again (counters outside the journal, one fsync'ed
  line per start/done); the two steps running at the kill ran again, once, and were done once in all;
* each branch got its own results back: the output equals an uninterrupted run's, and every
  Restate invocation of the run completed successfully.

Resume latency (the restarted process's spawn and 'serving' marker to the first step it started)
is printed in a summary at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from roost import App, RunHandle
from roost.runtime.restate._server import RestateServer, admin_query, free_port
from tests.restate_support import start_test_server

from ._harness import WorkerHarness, harness_on, print_latencies
from .branches_restate_pipeline import APP_NAME, DELAYS, RUN_INPUT, build_app
from .test_crash_restate import journal_rows, journaled_runs

pytestmark = [pytest.mark.crash, pytest.mark.restate]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "branches_restate_pipeline.py"
RUN_SERVICE = f"roost.{APP_NAME}.run"
EXPECTED = {"a": ["A0<>", "A1<A0>", "A2<A0+A1>"], "b": ["B0<>", "B1<B0>", "B2<B0+B1>"]}
VALUES = {v.split("<")[0]: v for vs in EXPECTED.values() for v in vs}  # 'A1' -> 'A1<A0>'
STEPS = sorted(VALUES)
BRANCH = {"0": "A", "1": "B"}  # branch path -> tag: gather's first task forks branch 0
FINISH_TIMEOUT = 30.0
LIVENESS = 10.0  # resume latency bound: a liveness check only (about 1 s is expected)
T = TypeVar("T")

LATENCIES: dict[str, dict[str, float]] = {}


def step_tag(label: str) -> str:
    """'A1' from the journaled name 'work@fork:entry/0:1'."""
    step, _, rest = label.rpartition("@")
    activation, _, pos = rest.rpartition("/")
    branch, n = pos.split(":")
    assert (step, activation.split(":")[0]) == ("work", "fork"), label
    return f"{BRANCH[branch]}{n}"


class Harness(WorkerHarness):
    def __init__(self, root: Path, server: RestateServer, run_id: str) -> None:
        super().__init__(root, run_id)
        self.server = server
        self.endpoint = f"http://127.0.0.1:{free_port()}"  # fixed: restarts serve the same URI
        self.spawned_at: dict[int, float] = {}
        self.serving_at: dict[int, float] = {}

    def start(self, scenario: str, *, block: bool = True, profile: str = "mixed") -> subprocess.Popen[bytes]:
        spawned = time.time()
        proc = self.spawn([str(SCRIPT), self.endpoint, self.server.admin_url, str(self.counter_dir), scenario, profile],
                          scenario, block=block)
        self.spawned_at[proc.pid] = spawned
        self.wait_marker(proc, "serving")
        pid, at, _ = self.marker("serving")[0].split()
        assert int(pid) == proc.pid
        self.serving_at[proc.pid] = float(at)
        return proc

    # -- client calls (a client-only RestateRuntime in this process) ------------------------------

    def client(self, fn: Callable[[App], Awaitable[T]]) -> T:
        from roost.runtime.restate import RestateRuntime

        async def go() -> T:
            runtime = RestateRuntime(ingress=self.server.ingress_url, admin=self.server.admin_url, serve=False)
            async with build_app(runtime) as app:
                await app.runtime()
                return await fn(app)

        return asyncio.run(go())

    def submit(self) -> None:
        async def go(app: App) -> None:
            await app.start(RUN_INPUT, self.run_id)

        self.client(go)

    def finish(self) -> dict[str, Any]:
        async def go(app: App) -> dict[str, Any]:
            result = await RunHandle(app, await app.runtime(), self.run_id).result(FINISH_TIMEOUT)
            return {"status": result.status, "outputs": {"fork": result["fork"].model_dump()}}

        return self.client(go)

    # -- Restate's journal of the run (admin SQL) -------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        return journal_rows(self.server.admin_url, RUN_SERVICE, self.run_id, ("Command: Run", "Notification: Run"),
                            full=True)

    def issued(self) -> list[str]:
        """Tags of the steps issued as ``Command: Run``, in journal order."""
        return [step_tag(json.loads(r["entry"])["Command"]["Run"]["name"]) for r in self.rows()
                if r["type"] == "Command: Run"]

    def journaled(self) -> dict[str, str]:
        """Tag -> journaled value of every step whose result Restate has journaled."""
        out: dict[str, str] = {}
        for label, row in journaled_runs(self.rows()).items():
            raw = json.loads(row["full"])["Notification"]["Completion"]["Run"]["result"]["Success"]
            out[step_tag(label)] = json.loads(bytes(raw))["v"]
        return out

    def invocations(self) -> list[dict[str, Any]]:
        return admin_query(self.server.admin_url, (
            "SELECT target, target_service_name AS service, target_handler_name AS handler, status, "
            "completion_result FROM sys_invocation "
            f"WHERE target_service_key = '{self.run_id}' OR target_service_name LIKE '{APP_NAME}.%'"))

    def check_invocations(self) -> None:
        """One workflow invocation ran the run, and every invocation of it completed successfully."""
        invocations = self.invocations()
        assert [(i["service"], i["handler"]) for i in invocations].count((RUN_SERVICE, "run")) == 1, invocations
        assert {i["service"] for i in invocations} == {RUN_SERVICE}, invocations
        pending = [i for i in invocations if (i["status"], i.get("completion_result")) != ("completed", "success")]
        assert not pending, f"invocations not completed successfully: {pending}"

    def check_server_log(self) -> None:
        log = self.server.log_file.read_text(errors="replace") if self.server.log_file.exists() else ""
        assert "RT0016" not in log, "a journal mismatch (RT0016) in restate-server's log"


@pytest.fixture(scope="module")
def restate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    with start_test_server(tmp_path_factory.mktemp("restate-branches")) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, restate_server: RestateServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    name = request.node.name.removeprefix("test_").replace("[", "-").replace("]", "")
    yield from harness_on(restate_server, lambda: Harness(tmp_path, restate_server, f"branches-{name}-{os.urandom(3).hex()}"))


@pytest.fixture(scope="module", autouse=True)
def latency_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from print_latencies(request, "restate parallel-branch crash", LATENCIES)


def test_uninterrupted(harness: Harness) -> None:
    h = harness
    h.start("none")
    h.submit()
    assert h.finish() == {"status": "completed", "outputs": {"fork": EXPECTED}}
    assert h.counts("start") == h.counts("done") == {s: 1 for s in STEPS}
    assert h.journaled() == VALUES
    assert sorted(h.issued()) == STEPS
    h.check_invocations()
    h.check_server_log()


@pytest.mark.parametrize("attempt", range(2))
@pytest.mark.parametrize("profile", sorted(DELAYS))
def test_kill_with_both_branches_in_their_last_step(harness: Harness, profile: str, attempt: int) -> None:
    h = harness
    proc = h.start("last", profile=profile)
    h.submit()
    h.wait_marker(proc, "last-A", "last-B")
    first_two = {s: VALUES[s] for s in ("A0", "A1", "B0", "B1")}
    # Each branch's last step runs only once its second step's result came back from Restate.
    h.wait_until(proc, "the first two steps of each branch journaled", lambda: h.journaled() == first_two)
    issued = h.issued()
    assert sorted(issued) == STEPS, f"both last steps are issued, each step once: {issued}"
    print(f"{profile}: steps issued before the kill, in journal order: {issued}")
    killed_at = h.kill(proc)
    before = h.counters()
    assert h.journaled() == first_two, "the journal changed while the process was being killed"
    for name in ("A2", "B2"):
        assert [e["event"] for e in before[name]] == ["start"], (name, before[name])

    new = h.start("none", block=False, profile=profile)
    h.wait_until(new, "a step starting again", lambda: h.first_start(killed_at, new.pid) is not None, timeout=LIVENESS)
    first = h.first_start(killed_at, new.pid)
    assert first is not None
    LATENCIES[f"kill, both branches in their last step [{profile}-{attempt}]"] = figures = {
        "spawn_to_serving": h.serving_at[new.pid] - h.spawned_at[new.pid],
        "serving_to_next_step": first["at"] - h.serving_at[new.pid],
        "spawn_to_next_step": first["at"] - h.spawned_at[new.pid],
    }
    print(", ".join(f"{k}={v:.3f}s" for k, v in figures.items()))

    final = h.finish()
    assert final == {"status": "completed", "outputs": {"fork": EXPECTED}}, "each branch got its own results"
    # The journal: every step once, the four results journaled before the kill unchanged, and the
    # replay issued the steps in the order the first execution had.
    assert h.journaled() == VALUES
    after = h.issued()
    assert after == issued, f"steps issued in another order or again after the restart: {issued} -> {after}"
    # Counters outside the journal.
    counters, starts, dones = h.counters(), h.counts("start"), h.counts("done")
    for name in ("A0", "A1", "B0", "B1"):  # journaled before the kill: never run again
        assert counters[name] == before[name], f"{name} ran again after its result was journaled"
        assert starts[name] == dones[name] == 1 and {e["pid"] for e in counters[name]} == {proc.pid}, counters[name]
    for name in ("A2", "B2"):  # running at the kill: run again, done once in all, by the new process
        assert starts[name] == 2 and dones[name] == 1, counters[name]
        assert [(e["event"], e["pid"]) for e in counters[name]] == [("start", proc.pid), ("start", new.pid),
                                                                    ("done", new.pid)], counters[name]
    for name, events in counters.items():  # idempotency keys stable across the restart, one per step
        assert len({e["key"] for e in events}) == 1, (name, events)
    assert len({events[0]["key"] for events in counters.values()}) == len(STEPS)
    h.check_invocations()
    h.check_server_log()
