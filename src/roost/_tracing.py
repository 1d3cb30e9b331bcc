"""OpenTelemetry spans of runs, activations, steps, model and tool calls (docs/observability.md).

The only module that imports ``opentelemetry``, lazily: without ``roost[otel]`` installed, or
with no tracer provider configured, every helper here does nothing.

Durable code replays, so spans are never opened around replayed code: each runtime calls these
helpers where it knows the work really happened (a step attempt that ran, an activation whose
outcome it recorded, a run it finished), and spans are created after the fact, with the recorded
start and end times. Ids are derived, not random: the trace id from the run id, each span id
from what it stands for (the run, the activation, the step attempt), so spans emitted by
different processes, before and after a crash, join one trace and the same parents.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime._base import StepInfo

_MISSING: Any = object()
_trace: Any = _MISSING  # the opentelemetry.trace module, None when not installed
_fixed: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("roost_span_ids", default=None)
_cache: tuple[Any, Any] | None = None  # (provider, tracer)
_log = logging.getLogger("roost.tracing")
_warned = False


@dataclass(frozen=True)
class _Step:
    """The step attempt running in this context: the parent of its model and tool call spans."""

    run_id: str
    activation_id: str
    caused_by: str | None
    span_id: int
    attrs: dict[str, Any]


_current: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("roost_trace_step", default=None)


def _api() -> Any:
    global _trace
    if _trace is _MISSING:
        try:
            import opentelemetry.trace
        except ImportError:
            _trace = None
        else:
            _trace = opentelemetry.trace
    return _trace


class _Ids:
    """The tracer's id generator, except while roost creates a span whose ids it derived."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        fixed = _fixed.get()
        return fixed[1] if fixed is not None else int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        fixed = _fixed.get()
        return fixed[0] if fixed is not None else int(self.inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return False


def _tracer() -> Any:
    """roost's tracer from the global provider, or None (no opentelemetry, no provider set)."""
    global _cache
    trace = _api()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _cache is not None and _cache[0] is provider:
        return _cache[1]
    try:
        tracer = provider.get_tracer("roost")
    except Exception as exc:  # a broken provider: no spans, never a failed run
        _log.warning("no spans: the tracer provider failed to give a tracer (%s: %s)", type(exc).__name__, exc)
        _cache = (provider, None)
        return None
    inner = getattr(tracer, "id_generator", None)
    if inner is not None and not isinstance(inner, _Ids):
        # The SDK's tracer (ours alone: get_tracer made it) takes the ids roost derives.
        tracer.id_generator = _Ids(inner)
    _cache = (provider, tracer)
    return tracer


def enabled() -> bool:
    return _tracer() is not None


def trace_id(run_id: str) -> int:
    """The trace id of a run: the first 16 bytes of sha256(run id)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1


def span_id(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big") or 1


def run_span_id(run_id: str) -> int:
    return span_id("run", run_id)


def activation_span_id(run_id: str, activation_id: str) -> int:
    return span_id("activation", run_id, activation_id)


def _emit(tracer: Any, name: str, run_id: str, sid: int, parent: int | None, start: float, end: float,
          attrs: dict[str, Any], error: str | None = None, kind: str = "INTERNAL") -> None:
    """Make one span. Tracing never changes what a run does: a failing tracer provider, span
    processor or exporter loses the span, says so in the log, and the run goes on."""
    global _warned
    try:
        _make(tracer, name, run_id, sid, parent, start, end, attrs, error, kind)
    except Exception as exc:
        level = logging.DEBUG if _warned else logging.WARNING
        _warned = True
        _log.log(level, "span %r of run %r was not made: the tracer provider failed (%s: %s)", name, run_id,
                 type(exc).__name__, exc, extra={"run_id": run_id})


def _make(tracer: Any, name: str, run_id: str, sid: int, parent: int | None, start: float, end: float,
          attrs: dict[str, Any], error: str | None, kind: str) -> None:
    trace = _api()
    tid = trace_id(run_id)
    if parent is not None or not isinstance(getattr(tracer, "id_generator", None), _Ids):
        # Another API implementation cannot take derived ids: its spans still share the trace.
        pctx = trace.SpanContext(tid, parent if parent is not None else run_span_id(run_id), is_remote=True,
                                 trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
        context = trace.set_span_in_context(trace.NonRecordingSpan(pctx))
    else:
        from opentelemetry.context import Context
        context = Context()  # a root span: no ambient span of the caller's
    token = _fixed.set((tid, sid))
    try:
        span = tracer.start_span(name, context=context, kind=getattr(trace.SpanKind, kind),
                                 attributes={k: v for k, v in attrs.items() if v is not None},
                                 start_time=int(start * 1e9))
    finally:
        _fixed.reset(token)
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end(end_time=int(max(end, start) * 1e9))


def _base(run_id: str, activation_id: str | None, caused_by: str | None) -> dict[str, Any]:
    return {"roost.run_id": run_id, "roost.activation_id": activation_id, "roost.caused_by": caused_by}


def run_span(app: str, run_id: str, status: str, start: float, end: float | None = None,
             error: str | None = None, *, on: bool = True) -> None:
    """The span of a whole run (``run <app>``): emitted once, by whoever records its end."""
    tracer = _tracer() if on else None
    if tracer is None:
        return
    attrs = {**_base(run_id, None, None), "roost.app": app, "roost.run.status": status}
    _emit(tracer, f"run {app}", run_id, run_span_id(run_id), None, start, end or time.time(), attrs,
          error if status == "failed" else None)


def activation_span(run_id: str, activation_id: str, agent: str, caused_by: str | None, status: str,
                    start: float, end: float | None = None, *, attempts: int = 1, error: str | None = None,
                    on: bool = True) -> None:
    """``invoke_agent <agent>``: emitted once an activation's outcome is recorded (never on replay)."""
    tracer = _tracer() if on else None
    if tracer is None:
        return
    attrs = {**_base(run_id, activation_id, caused_by), "gen_ai.operation.name": "invoke_agent",
             "gen_ai.agent.name": agent, "roost.agent": agent, "roost.activation.status": status,
             "roost.attempts": attempts}
    _emit(tracer, f"invoke_agent {agent}", run_id, activation_span_id(run_id, activation_id),
          run_span_id(run_id), start, end or time.time(), attrs, error if status == "failed" else None)


@contextlib.contextmanager
def step_span(info: StepInfo, *, on: bool = True) -> Iterator[None]:
    """``step <name>`` around one attempt that really runs (replayed steps never get here)."""
    tracer = _tracer() if on and info.activation_id else None
    if tracer is None:
        yield
        return
    sid = span_id("step", info.idempotency_key, info.attempt)
    attrs = {**_base(info.run_id, info.activation_id, info.caused_by), "roost.agent": info.agent,
             "roost.step": info.name, "roost.step.attempt": info.attempt}
    token = _current.set(_Step(info.run_id, info.activation_id, info.caused_by, sid, {}))
    start, error = time.time(), None
    try:
        yield
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _current.reset(token)
        _emit(tracer, f"step {info.name}", info.run_id, sid,
              activation_span_id(info.run_id, info.activation_id), start, time.time(), attrs, error)


@contextlib.contextmanager
def call_span(name: str, attrs: dict[str, Any], kind: str = "CLIENT") -> Iterator[dict[str, Any]]:
    """A model (``chat <model>``) or tool (``execute_tool <tool>``) call inside a step; the caller
    may add attributes (token usage) to the dict it gets, until the call ends."""
    step = _current.get()
    tracer = _tracer() if step is not None else None
    extra: dict[str, Any] = {}
    if tracer is None or step is None:
        yield extra
        return
    start, error = time.time(), None
    try:
        yield extra
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        extra["error.type"] = type(exc).__name__
        raise
    finally:
        all_attrs = {**_base(step.run_id, step.activation_id, step.caused_by), **attrs, **extra}
        _emit(tracer, name, step.run_id, span_id("call", step.span_id, name), step.span_id, start, time.time(),
              all_attrs, error, kind)
