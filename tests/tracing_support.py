"""OpenTelemetry in tests: one global TracerProvider per process with an in-memory exporter.

``trace.set_tracer_provider`` takes effect once per process, so every test shares the exporter
and picks out its own spans by run id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

_EXPORTER: Any = None


def exporter() -> Any:
    """The in-memory exporter behind the global tracer provider (set up on first use)."""
    global _EXPORTER
    if _EXPORTER is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            raise RuntimeError("another global tracer provider was set before the tests' own")
    return _EXPORTER


def spans_of(run_id: str) -> list[Any]:
    return [s for s in exporter().get_finished_spans() if (s.attributes or {}).get("roost.run_id") == run_id]


async def wait_spans(run_id: str, until: Any, timeout: float = 30.0) -> list[Any]:
    """The run's spans once ``until(spans)`` holds (spans made after the result may trail it)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = spans_of(run_id)
        if until(spans) or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.05)


class _Failing:
    """A span processor that raises on the spans of the runs in ``runs`` (on start and on end)."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self.raised = 0

    def _check(self, span: Any) -> None:
        if (span.attributes or {}).get("roost.run_id") in self.runs:
            self.raised += 1
            raise RuntimeError("the span processor is broken")

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._check(span)

    def on_end(self, span: Any) -> None:
        self._check(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_FAILING: _Failing | None = None


def failing_processor() -> _Failing:
    """A processor on the global provider that breaks the spans of the runs it is given."""
    global _FAILING
    if _FAILING is None:
        from opentelemetry import trace

        exporter()
        _FAILING = _Failing()
        trace.get_tracer_provider().add_span_processor(_FAILING)  # type: ignore[attr-defined]
    return _FAILING
