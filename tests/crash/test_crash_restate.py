"""kill -9 the Restate backend at chosen points of a run, bring it back, and check what survived.

One restate-server (module scope, its data in a tmp dir, free loopback ports) hosts every run.
Each test picks an endpoint port and keeps it (a restarted process serves the same URI, and its
code version is the same, so Restate's pinned invocations find it again), runs
tests/crash/restate_pipeline.py there as a serving subprocess, starts a run from this process
with a client-only ``RestateRuntime``, waits (bounded) until the pipeline signals that it is at
the kill point, kills it with SIGKILL (by pid), snapshots Restate's journal of the run (which
steps have their result journaled) and the counters (kept outside the journal, one fsync'ed
line per step start/done), starts the serving process again without blocking, and checks
against an uninterrupted run of the same pipeline (another run id on the same server).

A run is one Restate Workflow invocation (``roost.crashrestate.run``, keyed by the run id,
handler ``run``); every activation runs inside it, and each ``ctx.step`` is one ``ctx.run`` in
its journal, named ``<step>@<activation id>/<position>`` (the agent is the activation id up to
its first ':'). A step counts as journaled once its ``Command: Run`` has a successful
``Notification: Run`` (read through admin SQL: ``sys_journal`` joined with ``sys_invocation``).
The run's record is the workflow's state (``run``, and ``a:<activation id>`` per activation),
read with the client's ``_fetch``. The checks:

* a step journaled before a kill is never executed again (its counter lines do not change);
* every step ran to 'done' exactly once overall; interrupted steps started once more;
* nothing was lost: every agent produced, the run's record lists its five activations, each
  once and completed, with nothing waiting, and every Restate invocation of the run (the
  workflow's ``run``, and its shared handlers called by the client) completed successfully;
* the outputs equal the uninterrupted run's, as JSON (up to the run id inside idempotency keys).

The last tests kill restate-server itself (SIGKILL, by its pid) mid-run and restart it on the
same data dir and ports while the serving process keeps running: during a ctx.sleep (the timer
comes due while the server is down), inside an async step (the SDK cancels the abandoned
attempt) and inside a sync step (its thread cannot be cancelled: it runs on beside the new
attempt, which the contract allows for a step whose result was not journaled).

Resume latency: each test records how long after the endpoint was back the run went on (the
next step's 'start' counter line; for the approval tests, the run finishing), from the restarted
process's spawn and from its 'serving' marker (written once it listens and is registered;
Restate may reach it slightly before), or from restate-server's restart. The figures are printed
in a summary at the end of the module; only a generous liveness bound (LIVENESS) is asserted.
Restate retries a failed invocation after 100 ms, doubling up to 1 s, so a run should resume
within about 1 s of its endpoint listening again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roost import App
from roost.runtime import DurableRuntime
from roost.runtime.restate._server import RestateServer, admin_query, free_port
from tests.restate_support import start_test_server

from ._harness import RUN_PLACEHOLDER, PipelineHarness, print_latencies
from ._spans import ENV as SPANS_ENV
from ._spans import check_resumed_spans, read_spans
from .restate_pipeline import APP_NAME, STEPS

pytestmark = [pytest.mark.crash, pytest.mark.restate]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "restate_pipeline.py"
FINISH_TIMEOUT = 30.0  # seconds for the recovered run to finish
LIVENESS = 10.0  # resume latency bound: a liveness check only (about 1 s is expected)
OUTAGE = 3.0  # seconds the endpoint stays down in test_kill_mid_fanout
AGENTS = {"plan", "fact", "style", "merge", "publish"}
PLAN_STEPS = {"plan.outline", "plan.research", "plan.draft"}
RUN_SERVICE = f"roost.{APP_NAME}.run"  # the run workflow, keyed by run id; its handler 'run' runs the run
RUN_ENTRIES = ("Command: Run", "Notification: Run")


# Resume latency figures per test, summarised at the end of the module.
LATENCIES: dict[str, dict[str, float]] = {}


# -- Restate's journal of a run workflow (admin SQL; also used by test_crash_branches_restate) ---


def journal_rows(admin_url: str, service: str, run_id: str, entry_types: tuple[str, ...], *,
                 full: bool = False) -> list[dict[str, Any]]:
    """Entries of those types in the journal of the workflow invocation ``service``/``run_id``
    (handler 'run'), in journal order; ``full`` adds each entry's ``entry_json`` (with values)."""
    types = ", ".join(f"'{t}'" for t in entry_types)
    return admin_query(admin_url, (
        "SELECT j.id AS id, j.index AS idx, j.entry_type AS type, j.entry_lite_json AS entry"
        + (", j.entry_json AS full" if full else "") + " FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
        f"WHERE i.target_service_name = '{service}' AND i.target_service_key = '{run_id}' "
        f"AND i.target_handler_name = 'run' AND j.entry_type IN ({types}) ORDER BY j.index"))


def journaled_runs(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """From ``Command: Run`` / ``Notification: Run`` rows: the name of every ``ctx.run`` whose
    result Restate journaled successfully, with its notification row. A name issued twice as a
    command (a journaled step issued again) fails the test."""
    names: dict[tuple[str, int], str] = {}
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        entry = json.loads(row["entry"])
        if row["type"] == "Command: Run":
            run = entry["Command"]["Run"]
            names[(row["id"], run["completion_id"])] = run["name"]
        elif entry["Notification"].get("result") == "Success":
            done[(row["id"], entry["Notification"]["id"]["CompletionId"])] = row
    issued = Counter(names.values())
    assert all(n == 1 for n in issued.values()), f"a ctx.run was issued twice in the journal: {issued}"
    return {name: done[key] for key, name in names.items() if key in done}


def step_of(label: str) -> str:
    """The step's name from its journaled name ``<step>@<activation id>/<position>``."""
    return label.rpartition("@")[0]


def agent_of(label: str) -> str:
    """The agent from a journaled step name: its activation id up to the first ':'."""
    return label.rpartition("@")[2].split(":", 1)[0]


# -- the harness ----------------------------------------------------------------------------------


class Harness(PipelineHarness):
    """One run id, one counter directory and one endpoint port; the serving processes started
    on them, and client calls to the run from this process."""

    def __init__(self, root: Path, server: RestateServer, run_id: str) -> None:
        super().__init__(root, run_id)
        self.server = server
        self.endpoint = f"http://127.0.0.1:{free_port()}"  # fixed for this test: restarts serve the same URI
        self.serving_at: dict[int, float] = {}  # pid -> when it served (its marker's time)
        self.spawned_at: dict[int, float] = {}

    def start(self, scenario: str, *, block: bool = True) -> subprocess.Popen[bytes]:
        """Start a serving process and wait until it serves (listens, and is registered)."""
        spawned = time.time()
        proc = self.spawn([str(SCRIPT), self.endpoint, self.server.admin_url, str(self.counter_dir), scenario],
                          scenario, block=block)
        self.spawned_at[proc.pid] = spawned
        self.wait_marker(proc, "serving")
        pid, at, _ = self.marker("serving")[0].split()
        assert int(pid) == proc.pid
        self.serving_at[proc.pid] = float(at)
        return proc

    # -- Restate's journal of the run (admin SQL) -------------------------------------------------

    def journal(self, entry_types: tuple[str, ...]) -> list[dict[str, Any]]:
        """The entries of those types in the run's journal: its workflow invocation's (handler
        ``run``; the shared handlers' invocations have journals of their own)."""
        return journal_rows(self.server.admin_url, RUN_SERVICE, self.run_id, entry_types)

    def journaled_steps(self) -> set[str]:
        """'agent.step' for every step whose result Restate has journaled."""
        return {f"{agent_of(label)}.{step_of(label)}" for label in journaled_runs(self.journal(RUN_ENTRIES))}

    def sleeps(self) -> list[float]:
        """Wake-up times (epoch seconds) of the run's ctx.sleep entries (plan's is its only one)."""
        rows = self.journal(("Command: Sleep",))
        return [json.loads(r["entry"])["Command"]["Sleep"]["wake_up_time"] / 1000.0 for r in rows]

    def invocations(self) -> list[dict[str, Any]]:
        """Every Restate invocation keyed by the run id (the workflow's ``run`` and the shared
        handlers the client called), and any of an agent's Virtual Object of this app (none here:
        no agent is ``keyed_by``)."""
        return admin_query(self.server.admin_url, (
            "SELECT target, target_service_name AS service, target_handler_name AS handler, status, "
            "completion_result FROM sys_invocation "
            f"WHERE target_service_key = '{self.run_id}' OR target_service_name LIKE '{APP_NAME}.%'"))

    # -- client calls (a client-only RestateRuntime in this process) ------------------------------

    def client_runtime(self) -> DurableRuntime:
        from roost.runtime.restate import RestateRuntime

        return RestateRuntime(ingress=self.server.ingress_url, admin=self.server.admin_url, serve=False)

    def record(self) -> dict[str, Any]:
        """The run's record in its workflow's state, as stored: {"run": ..., "activations": [...]}
        (a client-only runtime reads it with admin SQL on the ``state`` table)."""

        async def go(app: App) -> dict[str, Any]:
            record: dict[str, Any] | None = await (await app.runtime())._fetch(self.run_id)  # type: ignore[attr-defined]
            assert record is not None, f"run {self.run_id!r} has no record in its workflow's state"
            return record

        return self.client(go)

    def run_record(self) -> dict[str, Any]:
        """The workflow's ``run`` state: status, error, waiting, activations (a count)..."""
        run: dict[str, Any] = self.record()["run"]
        return run

    def activations(self) -> list[tuple[str, str, str]]:
        """(agent, kind, status) of every activation with a record (``a:<id>``) in the workflow's state."""
        return [(a["agent"], a["kind"], a["status"]) for a in self.record()["activations"]]

    def wait_for_approval(self, proc: subprocess.Popen[bytes]) -> None:
        self.wait_until(proc, "the run waiting for publish's approval", lambda: self.run_record()["waiting"])
        assert self.run_record()["waiting"] == ["publish"]


@dataclass
class Snapshot:
    """What had happened when a process was killed."""

    journaled: set[str]
    counters: dict[str, list[dict[str, Any]]]
    killed_at: float


@pytest.fixture(scope="module")
def restate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    server = start_test_server(tmp_path_factory.mktemp("restate-crash"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def harness(tmp_path: Path, restate_server: RestateServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    if not restate_server.running:  # a failed earlier test may have left it down
        restate_server.start()
    h = Harness(tmp_path, restate_server, f"crash-{request.node.name.removeprefix('test_')}-{os.urandom(3).hex()}")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, restate_server: RestateServer) -> dict[str, Any]:
    """The same pipeline run uninterrupted on the same server (another run id): result, counters."""
    h = Harness(tmp_path_factory.mktemp("restate-baseline"), restate_server, f"crash-baseline-{os.urandom(3).hex()}")
    try:
        proc = h.start("none")
        h.submit()
        h.wait_for_approval(proc)
        h.resolve("publish", True)
        result = h.finish()
        return {"result": result, "starts": h.counts("start"), "dones": h.counts("done"),
                "counters": h.counters(), "activations": h.activations(), "run_id": h.run_id,
                "journaled": h.journaled_steps()}
    finally:
        h.close()


@pytest.fixture(scope="module", autouse=True)
def latency_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from print_latencies(request, "restate crash suite", LATENCIES)


def endpoint_latency(test: str, h: Harness, proc: subprocess.Popen[bytes], resumed_at: float) -> None:
    """Record when the restarted process ``proc`` was spawned, served (listening and registered:
    Restate may reach it a little before) and ran the next step."""
    spawned, serving = h.spawned_at[proc.pid], h.serving_at[proc.pid]
    record_latency(test, spawn_to_serving=serving - spawned, serving_to_next_step=resumed_at - serving,
                   spawn_to_next_step=resumed_at - spawned)


def record_latency(test: str, **figures: float) -> None:
    LATENCIES[test] = figures
    print(f"{test}: " + ", ".join(f"{k}={v:.3f}s" for k, v in figures.items()))


# -- checks ---------------------------------------------------------------------------------------


def fact_completed(h: Harness) -> bool:
    return ("fact", "completed") in [(a, s) for a, _, s in h.activations()]


def crash_at(h: Harness, proc: subprocess.Popen[bytes], *, journaled: set[str]) -> Snapshot:
    """kill -9 the serving process, once Restate's journal holds exactly ``journaled``."""
    before = h.journaled_steps()
    assert before == journaled, f"at the wrong point: journaled {sorted(before)}"
    counters = h.counters()
    killed_at = h.kill(proc)
    assert h.journaled_steps() == journaled, "the journal changed while the process was being killed"
    for step in journaled:  # a journaled step ran to 'done' once before the kill
        assert [e["event"] for e in counters[step]].count("done") == 1, step
    return Snapshot(journaled, counters, killed_at)


def resumed(h: Harness, proc: subprocess.Popen[bytes] | None, step: str, *, after: float,
            pid: int | None = None) -> float:
    """Wait (bounded by LIVENESS) for the next step's 'start' line after ``after``; check it is
    ``step``'s and return when it was written."""
    h.wait_until(proc, f"{step} starting again", lambda: h.first_start(after, pid) is not None, timeout=LIVENESS)
    first = h.first_start(after, pid)
    assert first is not None and f"{first['agent']}.{first['step']}" == step, f"resumed with {first}, not {step}"
    return float(first["at"])


def approve_and_finish(h: Harness, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Approve 'publish' once the run waits for it (the test process does), then finish."""
    h.wait_for_approval(proc)
    h.resolve("publish", True)
    return h.finish()


def check_recovered(h: Harness, baseline: dict[str, Any], final: dict[str, Any], kills: list[Snapshot],
                    extra_starts: dict[str, int], *, at_least_once: frozenset[str] = frozenset()) -> None:
    """The recovered run against the uninterrupted one (see the module docstring).

    ``extra_starts``: per step, how many more times it started than in the uninterrupted run
    (once per kill that interrupted it); ``at_least_once``: interrupted steps whose abandoned
    attempt may have finished as well (checked: done once or more)."""
    # Nothing lost, and the same outputs as the uninterrupted run.
    assert final["status"] == "completed"
    assert set(final["outputs"]) == AGENTS, "an agent never produced"
    assert final["agent_status"] == {a: "completed" for a in AGENTS}
    assert final["outputs"] == baseline["result"]["outputs"]

    counters = h.counters()
    starts, dones = h.counts("start"), h.counts("done")
    # Every step ran to 'done' exactly once overall (no side effect after its result was journaled).
    assert all(dones.get(s, 0) >= 1 for s in at_least_once), f"a step never completed: {dones}"
    dones.update({s: 1 for s in at_least_once})
    assert dones == {s: 1 for s in STEPS}, f"steps did not complete exactly once: {dones}"
    # A step journaled before a kill never ran again after it.
    for snap in kills:
        for step in snap.journaled:
            assert counters[step] == snap.counters[step], f"{step} ran again after it was journaled"
    # Interrupted steps started once more per interruption, the others as often as uninterrupted.
    for step in STEPS:
        expected = baseline["starts"][step] + extra_starts.get(step, 0)
        assert starts[step] == expected, f"{step}: {starts[step]} starts, expected {expected}"
    # Idempotency keys are stable across recoveries, and equal the uninterrupted run's (run id
    # aside) up to the converge (after it, activation ids depend on which upstream came first).
    for step, events in counters.items():
        assert len({e["key"] for e in events}) == 1, f"{step}: idempotency key changed: {events}"
        if step in PLAN_STEPS | {"fact.fact", "style.style"}:
            ours = events[0]["key"].replace(h.run_id, RUN_PLACEHOLDER)
            theirs = baseline["counters"][step][0]["key"].replace(baseline["run_id"], RUN_PLACEHOLDER)
            assert ours == theirs, step

    # The run's record (its workflow's state): five activations, one per agent, each completed
    # (merge, the converge, is one activation), nothing waiting.
    record = h.record()
    run = record["run"]
    assert (run["status"], run["error"], run["waiting"]) == ("completed", None, []), run
    assert run["activations"] == len(record["activations"]) == 5, (run["activations"], record["activations"])
    assert len({a["id"] for a in record["activations"]}) == 5
    activations = [(a["agent"], a["kind"], a["status"]) for a in record["activations"]]
    assert sorted(activations) == sorted(baseline["activations"])
    assert sorted(agent for agent, _, status in activations if status == "completed") == sorted(AGENTS)
    # Restate: the run is one workflow invocation (no agent is keyed_by: no Virtual Object), and
    # every invocation of the run (the workflow's run, its shared handlers) completed, none failed.
    invocations = h.invocations()
    runs = [i for i in invocations if (i["service"], i["handler"]) == (RUN_SERVICE, "run")]
    assert len(runs) == 1, f"one workflow invocation runs the run: {invocations}"
    assert {i["service"] for i in invocations} == {RUN_SERVICE}, invocations
    pending = [i for i in invocations if (i["status"], i.get("completion_result")) != ("completed", "success")]
    assert not pending, f"invocations not completed successfully: {pending}"


# -- the uninterrupted run -----------------------------------------------------------------------


def test_uninterrupted_run(baseline: dict[str, Any]) -> None:
    result = baseline["result"]
    assert result["status"] == "completed"
    assert set(result["outputs"]) == AGENTS
    assert baseline["dones"] == {s: 1 for s in STEPS}
    # 'draft' fails its first attempt and succeeds on the retry; everything else runs once.
    assert baseline["starts"] == {s: 2 if s == "plan.draft" else 1 for s in STEPS}
    assert sorted(baseline["activations"]) == sorted([("plan", "entry", "completed"), ("fact", "edge", "completed"),
                                                       ("style", "edge", "completed"),
                                                       ("merge", "converge", "completed"),
                                                       ("publish", "edge", "completed")])
    assert baseline["journaled"] == set(STEPS), baseline["journaled"]


# -- kill the serving process, start it again ---------------------------------------------------


def test_kill_inside_step(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed inside plan's 'research' step: 'outline' (journaled) must not run again."""
    h = harness
    proc = h.start("step")
    h.submit()
    h.wait_marker(proc, "step")
    snap = crash_at(h, proc, journaled={"plan.outline"})
    assert [e["event"] for e in snap.counters["plan.research"]] == ["start"]
    new = h.start("step", block=False)
    at = resumed(h, new, "plan.research", after=snap.killed_at, pid=new.pid)
    endpoint_latency("kill inside step", h, new, at)
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, [snap], {"plan.research": 1})


def test_kill_during_sleep(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed during plan's ctx.sleep: the timer survives (fires at its journaled time, not
    sooner, and is not journaled again), and the steps before it are not run again."""
    h = harness
    proc = h.start("sleep")
    h.submit()
    h.wait_marker(proc, "sleep")
    h.wait_until(proc, "the sleep journaled", h.sleeps)
    snap = crash_at(h, proc, journaled={"plan.outline", "plan.research"})
    (wake,) = h.sleeps()
    assert snap.killed_at < wake - 1.0, "the kill should come well before the timer fires"
    new = h.start("sleep", block=False)
    serving = h.serving_at[new.pid]
    assert serving < wake, "the endpoint should be back before the timer fires"
    at = resumed(h, new, "plan.draft", after=snap.killed_at, pid=new.pid)
    assert at >= wake - 0.005, "the step after the sleep ran before the journaled wake-up time"
    record_latency("kill during ctx.sleep", spawn_to_serving=serving - h.spawned_at[new.pid],
                   wake_to_next_step=at - max(wake, serving))
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, [snap], {})
    assert h.sleeps() == [wake], "the sleep was journaled again after the restart"


def test_kill_mid_fanout(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'fact' (one fan-out branch) is inside its step and 'style' (the other) is
    done, its activation completed in the run's record: style must not run again, fact must run
    once more.

    The endpoint stays down for OUTAGE seconds here, long enough for Restate's retry interval
    to reach its 1 s cap: the resume latency measured is the one a real outage would see."""
    h = harness
    proc = h.start("fanout")
    h.submit()
    h.wait_marker(proc, "fanout")
    h.wait_until(proc, "style's activation completed",
                 lambda: ("style", "completed") in [(a, s) for a, _, s in h.activations()])
    snap = crash_at(h, proc, journaled=PLAN_STEPS | {"style.style"})
    assert [e["event"] for e in snap.counters["fact.fact"]] == ["start"]
    time.sleep(OUTAGE)
    new = h.start("fanout", block=False)
    at = resumed(h, new, "fact.fact", after=snap.killed_at, pid=new.pid)
    endpoint_latency(f"kill mid fan-out ({OUTAGE:.0f} s outage)", h, new, at)
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, [snap], {"fact.fact": 1})


def test_kill_mid_fanout_traces_nothing_twice(harness: Harness, baseline: dict[str, Any],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mid fan-out kill, with both serving processes exporting their spans to one file: one
    ``invoke_agent`` span per activation and one run span (the new process replays the
    activations the killed one traced, and traces none of them again), one trace, and the steps
    journaled before the kill are not traced again."""
    pytest.importorskip("opentelemetry.sdk")
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPANS_ENV, str(spans_file))
    h = harness
    proc = h.start("fanout")
    h.submit()
    h.wait_marker(proc, "fanout")
    h.wait_until(proc, "style's activation completed",
                 lambda: ("style", "completed") in [(a, s) for a, _, s in h.activations()])
    snap = crash_at(h, proc, journaled=PLAN_STEPS | {"style.style"})
    before = read_spans(spans_file)
    assert {s["pid"] for s in before} == {proc.pid}
    steps = sorted(s["name"] for s in before if s["name"].startswith("step "))
    assert steps == sorted(["step outline", "step research", "step draft", "step draft", "step style"]), before
    # An activation's span comes once its outcome is known, before its record is written: the
    # killed process traced every activation recorded as completed, and none of fact (in its step).
    traced = {s["name"].removeprefix("invoke_agent ") for s in before if s["name"].startswith("invoke_agent ")}
    recorded = {a for a, _, status in h.activations() if status == "completed"}
    assert "style" in recorded and recorded <= traced and "fact" not in traced, (recorded, traced)
    new = h.start("fanout", block=False)
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, [snap], {"fact.fact": 1})
    check_resumed_spans(spans_file, h.run_id, APP_NAME, AGENTS, journaled=snap.journaled,
                        interrupted={"fact.fact"}, killed_pid=proc.pid)


def test_kill_with_converge_half_complete(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'fact' is done (its activation completed in the run's record; merge, the
    converge, waits for style) and 'style' (the other upstream) is inside its step: merge must
    fire once, with fact's recorded output."""
    h = harness
    proc = h.start("converge")
    h.submit()
    h.wait_marker(proc, "converge")
    h.wait_until(proc, "fact's activation completed", lambda: fact_completed(h))
    assert "merge" not in {a for a, _, _ in h.activations()}, "merge has a record before style is in"
    snap = crash_at(h, proc, journaled=PLAN_STEPS | {"fact.fact"})
    assert [e["event"] for e in snap.counters["style.style"]] == ["start"]
    new = h.start("converge", block=False)
    at = resumed(h, new, "style.style", after=snap.killed_at, pid=new.pid)
    endpoint_latency("kill mid converge", h, new, at)
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, [snap], {"style.style": 1})


def test_kill_while_waiting_for_approval(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'publish' waits for its approval; after the restart the run still waits
    (its workflow's state and durable promise kept it), the test approves, and the run finishes
    without running publish's step again."""
    h = harness
    proc = h.start("approval")
    h.submit()
    h.wait_for_approval(proc)
    snap = crash_at(h, proc, journaled=set(STEPS))
    new = h.start("approval", block=False)
    run = h.run_record()
    assert (run["status"], run["waiting"]) == ("running", ["publish"]), run
    asked = time.time()
    h.resolve("publish", True)
    final = h.finish()
    record_latency("approval, resolved after restart", spawn_to_serving=h.serving_at[new.pid] - h.spawned_at[new.pid],
                   resolve_to_finished=time.time() - asked)
    check_recovered(h, baseline, final, [snap], {})


def test_approval_resolved_while_endpoint_down(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'publish' waits for its approval; the test approves while no process
    serves the app: Restate keeps the call to the workflow's shared 'resolve' handler until the
    endpoint is back (the run still waits meanwhile), then the run finishes."""
    h = harness
    proc = h.start("approval")
    h.submit()
    h.wait_for_approval(proc)
    snap = crash_at(h, proc, journaled=set(STEPS))

    # In a thread: whether the client's resolve returns at once (sent) or only once the
    # workflow's handler has run it (called), this test goes on.
    answered: list[BaseException | None] = []

    def resolve() -> None:
        try:
            h.resolve("publish", True)
            answered.append(None)
        except BaseException as exc:  # reported by the test thread
            answered.append(exc)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()

    def resolve_held() -> bool:
        # The run workflow's shared handler 'resolve', accepted and not run yet.
        return any((i["service"], i["handler"]) == (RUN_SERVICE, "resolve") and i["status"] != "completed"
                   for i in h.invocations())

    h.wait_until(None, "the resolve invocation accepted by Restate", resolve_held)
    time.sleep(0.3)
    assert resolve_held(), "the resolve ran while no endpoint served it"
    assert h.run_record()["waiting"] == ["publish"]
    assert answered in ([], [None]), answered
    new = h.start("approval", block=False)
    final = h.finish()
    done = time.time()
    thread.join(timeout=LIVENESS)
    assert answered == [None], answered
    record_latency("approval, resolved while endpoint down", spawn_to_serving=h.serving_at[new.pid] - h.spawned_at[new.pid],
                   serving_to_finished=done - h.serving_at[new.pid])
    assert done - h.serving_at[new.pid] < LIVENESS
    check_recovered(h, baseline, final, [snap], {})


def test_killed_again_during_recovery(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed inside 'research'; the restarted process is killed inside 'research' again (it
    replays plan); the next one is killed with the converge half complete; the last finishes."""
    h = harness
    proc = h.start("step")
    h.submit()
    h.wait_marker(proc, "step")
    kills = [crash_at(h, proc, journaled={"plan.outline"})]
    proc = h.start("step")
    h.wait_marker(proc, "step")
    kills.append(crash_at(h, proc, journaled={"plan.outline"}))
    assert [e["event"] for e in kills[-1].counters["plan.research"]] == ["start", "start"]
    proc = h.start("converge")
    h.wait_marker(proc, "converge")
    h.wait_until(proc, "fact's activation completed", lambda: fact_completed(h))
    kills.append(crash_at(h, proc, journaled=PLAN_STEPS | {"fact.fact"}))
    new = h.start("none", block=False)
    final = approve_and_finish(h, new)
    check_recovered(h, baseline, final, kills, {"plan.research": 2, "style.style": 1})
    pids = {e["pid"] for events in h.counters().values() for e in events}
    assert len(pids) == 4, "each of the four processes should have executed something"


# -- kill restate-server itself -----------------------------------------------------------------


@dataclass
class ServerKill:
    killed_at: float
    restart_at: float  # restart() called
    healthy_at: float  # restart() returned: healthy, partitions answering


def kill_restate_server(h: Harness, proc: subprocess.Popen[bytes], *, down_until: float = 0.0) -> ServerKill:
    """SIGKILL restate-server (its own pid), keep it down until ``down_until`` (epoch seconds),
    and restart it on the same data dir and ports; the serving process must survive."""
    server = h.server
    assert server.running
    killed_at = time.time()
    assert server.kill() == -signal.SIGKILL
    assert not server.running
    time.sleep(max(0.0, down_until - time.time()))
    restart_at = time.time()
    server.restart()
    healthy_at = time.time()
    assert proc.poll() is None, "the serving process should survive restate-server's death"
    return ServerKill(killed_at, restart_at, healthy_at)


def test_kill_restate_server_during_sleep(harness: Harness, baseline: dict[str, Any]) -> None:
    """kill -9 restate-server while plan sleeps; it stays down past the timer's wake-up time and
    comes back on the same data dir. The serving process, left running, is invoked again: the
    overdue timer fires at once, the steps journaled before it are not run again, the run ends."""
    h = harness
    proc = h.start("server")
    h.submit()
    h.wait_marker(proc, "server")
    h.wait_until(proc, "the sleep journaled", h.sleeps)
    (wake,) = h.sleeps()
    journaled, counters = h.journaled_steps(), h.counters()
    assert journaled == {"plan.outline", "plan.research"}, sorted(journaled)
    down = kill_restate_server(h, proc, down_until=wake + 0.3)
    assert down.killed_at < wake, "the kill should come before the timer fires"
    at = resumed(h, proc, "plan.draft", after=down.killed_at)
    assert at >= wake, "the step after the sleep ran before the journaled wake-up time"
    record_latency("kill -9 restate-server during sleep", restart_to_healthy=down.healthy_at - down.restart_at,
                   restart_to_next_step=at - down.restart_at, healthy_to_next_step=at - down.healthy_at)
    final = approve_and_finish(h, proc)
    check_recovered(h, baseline, final, [Snapshot(journaled, counters, down.killed_at)], {})
    assert h.sleeps() == [wake], "the sleep was journaled again after the restart"
    assert len(h.procs) == 1, "one serving process served the whole run"


def test_kill_restate_server_inside_step(harness: Harness, baseline: dict[str, Any]) -> None:
    """kill -9 restate-server while plan's async 'research' step runs in the (surviving) serving
    process: the SDK cancels that attempt when its connection drops, Restate invokes the run's
    workflow again after the restart (it replays plan), and 'research' runs again, once, without
    'outline' running again."""
    h = harness
    proc = h.start("server-step")
    h.submit()
    h.wait_marker(proc, "server-step")
    journaled, counters = h.journaled_steps(), h.counters()
    assert journaled == {"plan.outline"}, sorted(journaled)
    down = kill_restate_server(h, proc)
    at = resumed(h, proc, "plan.research", after=down.killed_at)
    record_latency("kill -9 restate-server inside step", restart_to_healthy=down.healthy_at - down.restart_at,
                   restart_to_next_step=at - down.restart_at, healthy_to_next_step=at - down.healthy_at)
    time.sleep(0.3)  # an attempt the SDK did not cancel would have the same time to finish
    (h.counter_dir / "release").touch()
    final = approve_and_finish(h, proc)
    check_recovered(h, baseline, final, [Snapshot(journaled, counters, down.killed_at)], {"plan.research": 1})
    # Attempt numbers are counted in the serving process (docs/runtime.md, Restate: they restart
    # only if it dies); it survived here, so the attempt Restate started again is attempt 2.
    attempts = [(e["event"], e["attempt"]) for e in h.counters()["plan.research"]]
    assert attempts == [("start", 1), ("start", 2), ("done", 2)], attempts


def test_kill_restate_server_inside_sync_step(harness: Harness, baseline: dict[str, Any]) -> None:
    """kill -9 restate-server while 'fact' (a sync step, in a worker thread of the surviving
    serving process) runs. A thread cannot be cancelled: the abandoned attempt runs on beside the
    new one, and both may finish. That is within the contract (a step runs at least once until
    its result is journaled, never again after): the first result journaled wins, the journaled
    steps do not run again, and the run ends with the uninterrupted run's outputs."""
    h = harness
    proc = h.start("server-sync")
    h.submit()
    h.wait_marker(proc, "server-sync")
    h.wait_until(proc, "style's activation completed", lambda: ("style", "completed") in
                 [(a, s) for a, _, s in h.activations()])
    journaled, counters = h.journaled_steps(), h.counters()
    assert journaled == PLAN_STEPS | {"style.style"}, sorted(journaled)
    down = kill_restate_server(h, proc)
    at = resumed(h, proc, "fact.fact", after=down.killed_at)
    record_latency("kill -9 restate-server inside sync step", restart_to_healthy=down.healthy_at - down.restart_at,
                   restart_to_next_step=at - down.restart_at, healthy_to_next_step=at - down.healthy_at)
    (h.counter_dir / "release").touch()
    final = approve_and_finish(h, proc)
    time.sleep(0.2)  # let the abandoned thread write its last line
    events = [(e["event"], e["attempt"]) for e in h.counters()["fact.fact"]]
    dones = [a for ev, a in events if ev == "done"]
    print(f"fact.fact after restate-server's kill: {events}")
    assert [ev for ev, _ in events[:2]] == ["start", "start"] and 1 <= len(dones) <= 2, events
    check_recovered(h, baseline, final, [Snapshot(journaled, counters, down.killed_at)], {"fact.fact": 1},
                    at_least_once=frozenset({"fact.fact"}))
    # Attempt numbers are counted in the serving process (docs/runtime.md, Restate: they restart
    # only if it dies); it survived here, so the attempt Restate started again is attempt 2.
    assert events[:2] == [("start", 1), ("start", 2)], events
