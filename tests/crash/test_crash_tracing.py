"""Spans survive kill -9 of the embedded runtime: after resuming in another process, every
agent of the run has exactly one ``invoke_agent`` span and all spans share the run's trace.

Each process of tests/crash/pipeline.py writes the spans it ends to a JSON-lines file
(CRASH_SPANS_FILE), so the spans of the killed process and of the one that resumes are both seen."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from roost._tracing import run_span_id, trace_id

from ._spans import read_spans
from .conftest import Harness
from .pipeline import APP_NAME
from .test_crash_local import AGENTS, PLAN_STEPS, crash_at

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.crash


def test_no_duplicate_agent_spans_after_kill_and_resume(harness: Harness, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("CRASH_SPANS_FILE", str(spans_file))

    def plan_committed() -> bool:
        return [s for _, _, s in harness.messages("plan")] == ["completed"]

    # Killed inside both 'fact' and 'style', after plan's outcome committed.
    crash_at(harness, "inflight", "inflight-fact", "inflight-style", journaled=PLAN_STEPS,
             then=("plan's completion committed", plan_committed))
    before = read_spans(spans_file)
    assert Counter(s["name"] for s in before if s["name"].startswith("invoke_agent")) == {"invoke_agent plan": 1}
    killed_pid = before[0]["pid"]

    final = harness.run("none")
    assert final["status"] == "completed"
    spans = [s for s in read_spans(spans_file) if s["attributes"].get("roost.run_id") == harness.run_id]
    agents = Counter(s["name"] for s in spans if s["name"].startswith("invoke_agent"))
    assert agents == Counter({f"invoke_agent {a}": 1 for a in AGENTS}), agents  # none twice, none lost
    assert Counter(s["name"] for s in spans if s["name"].startswith("run ")) == {f"run {APP_NAME}": 1}
    assert {s["trace_id"] for s in spans} == {trace_id(harness.run_id)}  # one trace across both processes
    assert {s["pid"] for s in spans} - {killed_pid}, "the resumed process emitted nothing"
    # Steps journaled before the kill are not traced again; the killed ones once, by the resumed process.
    steps = Counter(s["name"] for s in spans if s["name"].startswith("step "))
    assert steps["step outline"] == steps["step research"] == 1
    assert steps["step fact"] == steps["step style"] == 1
    plan = next(s for s in spans if s["name"] == "invoke_agent plan")
    fact = next(s for s in spans if s["name"] == "invoke_agent fact")
    assert plan["parent"] == fact["parent"] == run_span_id(harness.run_id)
    assert fact["attributes"]["roost.caused_by"] == plan["attributes"]["roost.activation_id"]
