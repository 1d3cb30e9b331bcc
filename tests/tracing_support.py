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
