"""kill -9 the local runtime at chosen points of a run, restart it, and check what survived.

Each test runs tests/crash/pipeline.py in a subprocess, waits (bounded) until it signals that it
is at the kill point, kills it with SIGKILL, snapshots the journal and the counters (kept outside
the journal, one fsync'ed line per step start/done), restarts the same script with the same run
id, and checks against an uninterrupted run of the same pipeline in another journal:

* a step journaled before a kill is never executed again (its counter lines do not change);
* every step ran to 'done' exactly once overall, and every activation completed exactly once;
* nothing was lost: every agent produced, the run completed, no message left pending;
* the outputs equal the uninterrupted run's, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from roost.runtime.local import LocalRuntime

from .conftest import Harness
from .pipeline import DRAFT_MAX_ATTEMPTS, STEPS

pytestmark = pytest.mark.crash

AGENTS = {"plan", "fact", "style", "merge", "publish"}
PLAN_STEPS = {"plan.outline", "plan.research", "plan.draft"}


@dataclass
class Snapshot:
    """What had happened when a process was killed."""

    journaled: set[str]
    counters: dict[str, list[dict[str, Any]]]


def crash_at(h: Harness, scenario: str, *markers: str, approve: str = "auto",
             journaled: set[str], then: tuple[str, Any] | None = None) -> Snapshot:
    """Start the pipeline, wait until it is at ``scenario``'s kill point, kill -9 it.

    ``markers``: the at-<point> files it writes there; ``then``: a further (name, check) on the
    journal to wait for; ``journaled``: the steps that must be journaled at the kill point."""
    proc = h.start(scenario, approve=approve)
    h.wait_marker(proc, *(markers or (scenario,)))
    if then is not None:
        h.wait_until(proc, then[0], then[1])
    h.kill(proc)
    snap = Snapshot(h.journaled_steps(), h.counters())
    assert snap.journaled == journaled, f"killed at the wrong point ({scenario}): journaled {sorted(snap.journaled)}"
    for step in snap.journaled:  # a journaled step ran to 'done' once before the kill
        assert [e["event"] for e in snap.counters[step]].count("done") == 1, step
    return snap


def check_recovered(h: Harness, baseline: dict[str, Any], final: dict[str, Any], kills: list[Snapshot],
                    extra_starts: dict[str, int], *, loose: frozenset[str] = frozenset()) -> None:
    """The recovered run against the uninterrupted one (see the module docstring).

    ``extra_starts``: per step, how many more times it started than in the uninterrupted run
    (once per kill that interrupted it); ``loose``: steps whose start count is not checked."""
    # Nothing lost, and the same outputs as the uninterrupted run.
    assert final["status"] == "completed"
    assert set(final["outputs"]) == AGENTS, "an agent never produced"
    assert final["agent_status"] == {a: "completed" for a in AGENTS}
    assert json.dumps(final["outputs"], sort_keys=True) == json.dumps(baseline["result"]["outputs"], sort_keys=True)

    counters = h.counters()
    starts, dones = h.counts("start"), h.counts("done")
    # Every step ran to 'done' exactly once overall (no side effect after its result was journaled).
    assert dones == {s: 1 for s in STEPS}, f"steps did not complete exactly once: {dones}"
    # A step journaled before a kill never ran again after it.
    for snap in kills:
        for step in snap.journaled:
            assert counters[step] == snap.counters[step], f"{step} ran again after it was journaled"
    # Interrupted steps ran again (at least once per interruption), the others exactly as often
    # as in the uninterrupted run.
    for step in STEPS:
        if step not in loose:
            expected = baseline["starts"][step] + extra_starts.get(step, 0)
            assert starts[step] == expected, f"{step}: {starts[step]} starts, expected {expected}"
    # Idempotency keys are stable across recoveries, and equal the uninterrupted run's up to the
    # converge (after it, activation ids depend on which upstream finished first).
    for step, events in counters.items():
        assert len({e["key"] for e in events}) == 1, f"{step}: idempotency key changed: {events}"
        if step in PLAN_STEPS | {"fact.fact", "style.style"}:
            assert events[0]["key"] == baseline["counters"][step][0]["key"], step

    # The journal: every activation completed once, none pending, cancelled or duplicated.
    assert sorted(h.messages()) == sorted(baseline["messages"])
    assert Counter(status for _, _, status in h.messages()) == Counter(completed=5)
    status, owner, pending, error = h.run_row() or (None,) * 4
    assert (status, owner, pending, error) == ("completed", None, 0, None)


def resolve_externally(h: Harness, name: str, value: Any) -> list[str]:
    """Answer an approval from this process, with a fresh runtime on the journal that does not
    adopt the run (nothing runs it meanwhile). Returns what the run waited on before."""

    async def go() -> list[str]:
        async with LocalRuntime(h.journal, resume=False) as rt:
            waiting = (await rt.get(h.run_id)).waiting_on
            await rt.resolve(h.run_id, name, value)
            return waiting

    return asyncio.run(go())


# -- the uninterrupted run -----------------------------------------------------------------------


def test_uninterrupted_run(baseline: dict[str, Any]) -> None:
    result = baseline["result"]
    assert result["status"] == "completed"
    assert set(result["outputs"]) == AGENTS
    assert baseline["dones"] == {s: 1 for s in STEPS}
    # 'draft' fails its first attempt and succeeds on the retry; everything else runs once.
    assert baseline["starts"] == {s: 2 if s == "plan.draft" else 1 for s in STEPS}
    assert sorted(status for _, _, status in baseline["messages"]) == ["completed"] * 5


# -- one kill, one restart -----------------------------------------------------------------------


def test_kill_inside_step(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed inside plan's 'research' step: 'outline' (journaled) must not run again."""
    snap = crash_at(harness, "step", journaled={"plan.outline"})
    assert [e["event"] for e in snap.counters["plan.research"]] == ["start"]
    final = harness.run("none")
    check_recovered(harness, baseline, final, [snap], {"plan.research": 1})


def test_kill_between_steps(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed in orchestration code after 'outline' was journaled, before 'research' began."""
    snap = crash_at(harness, "between", journaled={"plan.outline"})
    assert "plan.research" not in snap.counters
    final = harness.run("none")
    check_recovered(harness, baseline, final, [snap], {})


def test_kill_during_sleep(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed during ctx.sleep: the timer survives (fires at its journaled time, not sooner, and
    is not restarted), and the steps before it are not run again."""

    def sleeps() -> list[tuple[str, str, Any]]:
        return harness.journal_entries("plan", "sleep")

    snap = crash_at(harness, "sleep", journaled={"plan.outline", "plan.research"}, then=("the sleep journaled", sleeps))
    killed_at = time.time()
    (recorded,) = sleeps()
    wake = float(json.loads(recorded[2]))
    assert killed_at < wake - 1.0, "the kill should come well before the timer fires"
    final = harness.run("none")
    check_recovered(harness, baseline, final, [snap], {})
    assert sleeps() == [recorded], "the sleep was journaled again after the restart"
    first_draft = harness.counters()["plan.draft"][0]
    assert first_draft["at"] >= wake - 0.005, "the step after the sleep ran before the journaled wake-up time"


def test_kill_with_message_in_flight(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed right after plan's completion committed its messages to 'fact' and 'style', while
    both are inside their steps (nothing of theirs journaled): both messages must be delivered."""

    def plan_committed() -> bool:
        return [s for _, _, s in harness.messages("plan")] == ["completed"]

    snap = crash_at(harness, "inflight", "inflight-fact", "inflight-style", journaled=PLAN_STEPS,
                    then=("plan's completion committed", plan_committed))
    assert [(t, s) for t, _, s in harness.messages() if t in ("fact", "style")] == [("fact", "pending"), ("style", "pending")]
    final = harness.run("none")
    check_recovered(harness, baseline, final, [snap], {"fact.fact": 1, "style.style": 1})


def test_kill_with_converge_half_complete(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'fact' is done and its contribution absorbed by 'merge', and 'style' (the
    other upstream) is inside its step: merge must fire once, with fact's recorded output."""

    def fact_absorbed() -> bool:
        # fact's output is in the engine's converge collection: fact completed, merge not started.
        return [s for _, _, s in harness.messages("fact")] == ["completed"] and harness.messages("merge") == []

    snap = crash_at(harness, "converge", journaled=PLAN_STEPS | {"fact.fact"},
                    then=("fact's contribution absorbed by merge", fact_absorbed))
    final = harness.run("none")
    check_recovered(harness, baseline, final, [snap], {"style.style": 1})


def test_kill_while_waiting_for_approval(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'publish' waits for its approval; the test approves through the journal
    while no process runs; the restarted process (which approves nothing) finishes the run,
    without running publish's step again."""

    def waiting() -> bool:
        return harness.journal_entries("publish", "promise") == [("publish", "waiting", None)]

    snap = crash_at(harness, "approval", approve="external", journaled=set(STEPS),
                    then=("publish waiting on its approval", waiting))
    assert resolve_externally(harness, "publish", True) == ["publish"]
    assert harness.run_row()[0] == "running"  # type: ignore[index]
    final = harness.run("none", approve="external")
    check_recovered(harness, baseline, final, [snap], {})
    assert [(n, s) for n, s, _ in harness.journal_entries("publish", "promise")] == [("publish", "done")]


def test_kill_during_retry_backoff(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed while 'draft' waits to be retried after a failed attempt: it must complete once,
    and the steps journaled before it must not run again."""
    snap = crash_at(harness, "retry", journaled={"plan.outline", "plan.research"})
    assert [e["event"] for e in snap.counters["plan.draft"]] == ["start", "fail"]
    final = harness.run("none")
    # How often 'draft' starts after the restart is test_retry_attempts_survive_kill's concern.
    check_recovered(harness, baseline, final, [snap], {}, loose=frozenset({"plan.draft"}))


def test_retry_attempts_survive_kill(harness: Harness, baseline: dict[str, Any]) -> None:
    """RetryPolicy: 'a step is tried at most max_attempts times in all'. A failed attempt that
    the runtime journaled before the kill counts: after the restart the step continues with
    attempt 2 (current_step().attempt), and is tried no more often in all than in the
    uninterrupted run. (The failure is journaled before the back-off starts; the kill waits for
    that row, not only for the failure to reach the runtime: a kill between the two cannot be
    counted, and the attempt runs again, at least once as for any unrecorded outcome.)"""

    def failure_journaled() -> bool:
        return ("draft", "retrying") in {(n, s) for n, s, _ in harness.journal_entries("plan", "step")}

    crash_at(harness, "retry", journaled={"plan.outline", "plan.research"},
             then=("draft's failed attempt journaled", failure_journaled))
    harness.run("none")
    tries = [e["attempt"] for e in harness.counters()["plan.draft"] if e["event"] == "start"]
    assert len(tries) <= DRAFT_MAX_ATTEMPTS, f"draft tried {len(tries)} times (attempts {tries}), max_attempts={DRAFT_MAX_ATTEMPTS}"
    assert tries == [1, 2] == [e["attempt"] for e in baseline["counters"]["plan.draft"] if e["event"] == "start"]


# -- killed again while recovering ---------------------------------------------------------------


def test_killed_again_during_recovery(harness: Harness, baseline: dict[str, Any]) -> None:
    """Killed inside 'research'; the restarted process is killed inside 'research' again while
    it replays plan; the next is killed with the converge half complete; the last one finishes
    (and approves, as a restarted process)."""
    kills = [crash_at(harness, "step", journaled={"plan.outline"})]
    kills.append(crash_at(harness, "step", journaled={"plan.outline"}))
    assert [e["event"] for e in kills[-1].counters["plan.research"]] == ["start", "start"]

    def fact_absorbed() -> bool:
        # fact's output is in the engine's converge collection: fact completed, merge not started.
        return [s for _, _, s in harness.messages("fact")] == ["completed"] and harness.messages("merge") == []

    kills.append(crash_at(harness, "converge", journaled=PLAN_STEPS | {"fact.fact"},
                          then=("fact's contribution absorbed by merge", fact_absorbed)))
    final = harness.run("none")
    check_recovered(harness, baseline, final, kills, {"plan.research": 2, "style.style": 1})
    pids = {e["pid"] for events in harness.counters().values() for e in events}
    assert len(pids) == 4, "each of the four processes should have executed something"
