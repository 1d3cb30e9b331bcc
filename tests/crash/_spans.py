"""CRASH_SPANS_FILE: the spans a crash-test process ends, one JSON line each.

A pipeline script run as a subprocess calls :func:`export_from_env` before it builds its app;
the test reads the file with :func:`read_spans`. Each span is exported (and fsync'ed) as it
ends, so a span ended before a kill -9 is in the file, and the spans of the killed process and
of the one that resumes its run land in the same file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "CRASH_SPANS_FILE"


def export_spans(path: str) -> None:
    """Set a global TracerProvider writing every span this process ends to ``path``."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Jsonl(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            with open(path, "a") as f:
                for s in spans:
                    f.write(json.dumps({"name": s.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
                                        "parent": s.parent.span_id if s.parent else None, "pid": os.getpid(),
                                        "attributes": dict(s.attributes or {})}, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Jsonl()))
    trace.set_tracer_provider(provider)


def export_from_env() -> None:
    if os.environ.get(ENV):
        export_spans(os.environ[ENV])


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def check_resumed_spans(path: Path, run_id: str, app: str, agents: set[str], journaled: set[str],
                        interrupted: set[str], killed_pid: int) -> list[dict[str, Any]]:
    """After a run killed once (the process ``killed_pid``) and finished by another process, the
    spans of the run in ``path`` hold no duplicate:

    * one ``invoke_agent <agent>`` per agent (each ran one activation), one ``run <app>``;
    * one trace (the run id's), and no span id twice;
    * a step journaled before the kill ('agent.step' in ``journaled``) has its spans from the
      killed process only, one per attempt (``roost.step.attempt``): none was made again;
    * a step interrupted by the kill has a span from the process that resumed the run.

    Returns the run's spans."""
    from collections import Counter

    from roost._tracing import trace_id

    spans = [s for s in read_spans(path) if s["attributes"].get("roost.run_id") == run_id]
    names = Counter(s["name"] for s in spans)
    assert {n: c for n, c in names.items() if n.startswith("invoke_agent ")} == \
        {f"invoke_agent {a}": 1 for a in agents}, names
    assert {n: c for n, c in names.items() if n.startswith("run ")} == {f"run {app}": 1}, names
    assert {s["trace_id"] for s in spans} == {trace_id(run_id)}, "the run's spans are not one trace"
    ids = Counter(s["span_id"] for s in spans)
    assert [s for s in spans if ids[s["span_id"]] > 1] == [], "a span was emitted twice"
    steps: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        if s["name"].startswith("step "):
            steps.setdefault(f"{s['attributes']['roost.agent']}.{s['attributes']['roost.step']}", []).append(s)
    for step in journaled:
        attempts = Counter(s["attributes"]["roost.step.attempt"] for s in steps.get(step, []))
        assert attempts and all(n == 1 for n in attempts.values()), f"{step}: {attempts}"
        assert {s["pid"] for s in steps[step]} == {killed_pid}, f"{step} was traced again after the kill"
    for step in interrupted:
        assert {s["pid"] for s in steps.get(step, [])} - {killed_pid}, f"{step}: no span from the resumed process"
    assert {s["pid"] for s in spans} - {killed_pid}, "the resumed process emitted nothing"
    return spans
