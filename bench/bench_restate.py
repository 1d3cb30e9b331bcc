"""Benchmarks of roost on Restate against the same work hand-written on the raw Restate SDK.

Run from the repository root with the project's venv (restate-server must be installed under
.roost/npm, e.g. by ``make test``, or be on PATH / in $ROOST_RESTATE_SERVER):

    .venv/bin/python bench/bench_restate.py                       # everything (~10 minutes, mostly roost throughput)
    .venv/bin/python bench/bench_restate.py --only latency,step
    .venv/bin/python bench/bench_restate.py --quick               # smaller counts, a smoke test
    .venv/bin/python bench/bench_restate.py --profile latency     # cProfile the roost side of one measurement

Measurements (``--only`` names): anatomy, latency, throughput, step, fanout, demo.

One restate-server (single node, 127.0.0.1, free ports, data in a temporary directory) serves
both sides in the same run. Both endpoints are served from this process (hypercorn, HTTP/2):
roost's through ``App(..., runtime=RestateRuntime(...))``, which serves and registers its apps,
and the native one through ``serve_asgi`` on a port of its own, registered with the admin API.
The server is stopped by its pid at the end and the directory deleted.

Prints a markdown table and writes bench/results/restate.json. See bench/README.md ("Restate")
for what each side does and what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import _common
import _demo
import _fanout_side
import _report
import httpx
import restate
from _common import ROOT, bounded, pct, proc_cpu  # bench/ is on sys.path when run as a script
from _demo import TOPIC, URL, check_facts, decide, nr, publish, review, write_draft
from _report import phases, print_results
from pydantic import BaseModel

from roost import App, agent
from roost.agent import Agent
from roost.result import FINISHED
from roost.runtime.restate import RestateRuntime
from roost.runtime.restate._http import serve_asgi
from roost.runtime.restate._server import (
    RestateServer,
    aadmin_query,
    aregister_deployment,
    binary_version,
    find_restate_server,
    free_port,
)

RESULTS = ROOT / "bench" / "results" / "restate.json"
TARGET_RATIO = 1.15  # the goal: roost within 15 % of native
N_STEPS = 200
IN_FLIGHT = 16


rn = _demo.load_example("restate_native", _demo.EXAMPLES / "dx" / "restate_native.py")  # the raw-SDK version

# The pipeline's step functions without the artificial sleeps (bench/_demo.py): both sides call
# these very function objects; sync ones run in the loop's default thread pool on both sides
# (roost's call_step and the SDK's create_run_coroutine both use run_in_executor).


class Outcome(BaseModel):
    """restate_native.Outcome over the same models as the roost side."""

    approved: bool
    writer: nr.Draft
    critic: nr.Review
    fact_checker: nr.FactCheck
    editor: nr.Verdict
    publisher: nr.Published | None = None


# The native workflow: examples/dx/restate_native.py's `Newsroom` workflow, line for line, with the
# no-sleep functions. Same name, so restate_native.run_once (the example's client) drives it.
STEP = rn.STEP  # RunOptions equal to roost's default RetryPolicy
native_newsroom = restate.Workflow("Newsroom")


@native_newsroom.main()
async def run(ctx: restate.WorkflowContext, idea: nr.Idea) -> Outcome:
    draft = await ctx.run_typed("writer", write_draft, STEP, idea)
    review_f = ctx.run_typed("critic", review, STEP, draft)
    facts_f = ctx.run_typed("fact_checker", check_facts, STEP, draft)
    await restate.gather(review_f, facts_f)
    rev, facts = await review_f, await facts_f
    verdict = await ctx.run_typed("editor", decide, STEP, draft, rev, facts)
    await ctx.promise("verdict", type_hint=nr.Verdict).resolve(verdict)
    approved = await ctx.promise("approval", type_hint=bool).value()
    published = None
    if approved and verdict.publish:
        published = await ctx.run_typed("publisher", publish, STEP, verdict)
    return Outcome(approved=approved, writer=draft, critic=rev, fact_checker=facts, editor=verdict, publisher=published)


@native_newsroom.handler()
async def awaiting_approval(ctx: restate.WorkflowSharedContext) -> nr.Verdict:
    return await ctx.promise("verdict", type_hint=nr.Verdict).value()


@native_newsroom.handler()
async def approve(ctx: restate.WorkflowSharedContext, approved: bool) -> bool:
    promise = ctx.promise("approval", type_hint=bool)
    earlier = await promise.peek()
    if earlier is not None:
        return earlier
    await promise.resolve(approved)
    return approved


# --------------------------------------------------------------------------------------------
# per-step overhead: N no-op steps inside one handler, timed inside it


class Msg(BaseModel):
    n: int


async def noop() -> None:
    return None


LOOPS: dict[str, list[float]] = {"roost": [], "native": []}  # wall time of each loop
LOOP_CPU: dict[str, list[float]] = {"roost": [], "native": []}  # this process's CPU time during it
LOOP_DONE: list[asyncio.Event] = []  # set by the roost engine when its loop is over

native_steps = restate.Service("NativeSteps")


@native_steps.handler()
async def loop(ctx: restate.Context, n: int) -> int:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await ctx.run_typed("noop", noop)
    LOOPS["native"].append(time.perf_counter() - t0)
    LOOP_CPU["native"].append(time.process_time() - c0)
    return n


async def orchestrate(inp: Msg, ctx: Any) -> Msg:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inp.n):
        await ctx.step("noop", noop)
    LOOPS["roost"].append(time.perf_counter() - t0)
    LOOP_CPU["roost"].append(time.process_time() - c0)
    if LOOP_DONE:
        LOOP_DONE[-1].set()
    return inp


# --------------------------------------------------------------------------------------------
# helpers


class Row(_report.Row):
    """measured: roost on Restate; native: the same work on the raw Restate SDK."""

    MS_DIGITS = 3
    MICRO_BELOW = 0.1


class Marks:
    """httpx response hook: (handler, time) of each ingress answer, for phase timings."""

    def __init__(self) -> None:
        self.on = False
        self.marks: list[tuple[str, float]] = []
        self.counts: Counter[str] = Counter()

    async def hook(self, response: httpx.Response) -> None:
        if self.on:
            t = time.perf_counter()
            handler = response.request.url.path.rstrip("/").rsplit("/", 1)[-1]
            self.marks.append((handler, t))
            self.counts[handler] += 1

    def install(self, client: httpx.AsyncClient) -> None:
        client.event_hooks = {"request": [], "response": [self.hook]}


# --------------------------------------------------------------------------------------------
# the bench: one server, both endpoints, drivers for one run of each side


class Bench:
    def __init__(self, tmp: Path, quick: bool, poll: float, profile: str | None) -> None:
        self.tmp = tmp
        self.quick = quick
        self.poll = poll
        self.profile_name = profile
        self.prof: cProfile.Profile | None = None
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.server: RestateServer | None = None
        self.native_stop = asyncio.Event()
        self.native_tasks: list[asyncio.Task[None]] = []
        self.apps: list[App] = []
        self.runtimes: dict[str, RestateRuntime] = {}
        self.marks = {"roost": Marks(), "native": Marks()}
        self.polls: list[int] = []

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    # -- setup / teardown

    async def open(self) -> None:
        binary = find_restate_server(install=False, root=ROOT)
        self.server = RestateServer(self.tmp / "restate", binary=binary)
        await asyncio.to_thread(self.server.start)
        self.ingress, self.admin = self.server.ingress_url, self.server.admin_url
        # native endpoint: its own port, served here, registered with the admin API
        self.native_uri = await self.serve_native(restate.app([native_newsroom, native_steps]))
        self.client = httpx.AsyncClient(timeout=60)
        self.marks["native"].install(self.client)
        # roost: both apps on one endpoint address (one hypercorn server, a path per app version)
        self.roost_endpoint = f"http://127.0.0.1:{free_port()}"
        self.pipe = self.roost_app(_demo.roost_pipeline(), "bench")
        steps_agent = agent("orch").contracts(input=Msg, output=Msg).engine(orchestrate)
        self.steps = self.roost_app([steps_agent], "steps")
        for app in (self.pipe, self.steps):
            await app.runtime()
        self.marks["roost"].install(self.pipe_runtime.client)
        # the ingress learns new services a moment after the admin API registered them
        await self.until_ok("native", lambda k: self.native_once(f"probe-n-{k}"))
        await self.until_ok("roost steps", lambda k: self.steps.arun(Msg(n=0), run_id=f"probe-s-{k}", timeout=30))
        await self.until_ok("roost pipeline", lambda k: self.roost_once(f"probe-r-{k}"))

    async def until_ok(self, what: str, attempt: Callable[[int], Awaitable[Any]]) -> None:
        await _common.until_ok(what, attempt, timeout=15.0, pause=0.1)  # 404 from the ingress until it knows the services

    async def serve_native(self, asgi: Any) -> str:
        port = free_port()
        ready = asyncio.Event()
        task = asyncio.create_task(serve_asgi(asgi, port=port, shutdown=self.native_stop, ready=ready))
        self.native_tasks.append(task)
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        if not ready.is_set():
            raise TimeoutError(f"the native endpoint did not listen on port {port}")
        uri = f"http://127.0.0.1:{port}"
        await aregister_deployment(self.admin, uri)
        return uri

    def roost_app(self, agents: list[Agent], name: str, **options: Any) -> App:
        runtime = RestateRuntime(ingress=self.ingress, admin=self.admin, endpoint=self.roost_endpoint)
        app = App(agents, name=name, runtime=runtime, **options)
        self.apps.append(app)
        self.runtimes[name] = runtime
        return app

    @property
    def pipe_runtime(self) -> RestateRuntime:
        return self.runtimes["bench"]

    async def close(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                await app.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        self.native_stop.set()
        for task in self.native_tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)  # SIGTERM to its pid, SIGKILL after 10 s

    # -- profiling the roost side

    @contextlib.contextmanager
    def profiling(self, name: str) -> Iterator[None]:
        if self.profile_name != name:
            yield
            return
        if self.prof is None:
            self.prof = cProfile.Profile()
        self.prof.enable()
        try:
            yield
        finally:
            self.prof.disable()

    # -- one run of each side

    async def roost_once(self, run_id: str, poll_record: bool = False,
                         times: dict[str, float] | None = None) -> None:
        """Start, wait until the run waits for the editor's approval, approve it, await the result.

        The wait is ``handle.approval()`` (one call that blocks on the run workflow's shared
        ``waiting`` handler, like native's ``awaiting_approval``); ``poll_record`` polls the run
        record (``handle.record()``) every ``self.poll`` seconds instead."""
        app = self.pipe
        handle = await app.start(nr.Idea(topic=TOPIC), run_id=run_id)
        t_started = time.perf_counter()
        if not poll_record:
            name = await handle.approval(timeout=30)
            assert name is not None
        else:
            polls = 0
            while True:
                rec = await handle.record()
                polls += 1
                if rec.waiting_on:
                    name = rec.waiting_on[0]
                    break
                if rec.status in FINISHED:
                    raise RuntimeError(f"run {run_id} finished without waiting for approval: {rec.status}")
                await asyncio.sleep(self.poll)
            self.polls.append(polls)
        t_seen = time.perf_counter()
        _, t_resolved = await _demo.approve_and_check(app, handle, run_id, name)
        if times is not None:
            times.update(started=t_started, seen=t_seen, resolved=t_resolved)

    async def native_once(self, run_id: str) -> None:
        out = await rn.run_once(self.client, self.ingress, run_id, TOPIC)  # the example's own client
        if out["publisher"]["url"] != URL:
            raise RuntimeError(f"native run {run_id} produced {out}")

    def cpu(self) -> tuple[float, float]:
        assert self.server is not None and self.server.pid is not None
        return time.process_time(), proc_cpu(self.server.pid)


# --------------------------------------------------------------------------------------------
# 0. same work, and what each side does per run (invocations, journal entries, ledger calls)


async def sql(b: Bench, query: str) -> list[dict[str, Any]]:
    return await aadmin_query(b.admin, query, timeout=30)


def ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e3


@contextlib.contextmanager
def count_admin_queries() -> Iterator[list[int]]:
    """Counts the admin SQL queries RestateRuntime makes (if it makes any: some versions read the
    run record that way); a counting wrapper around the function its module imported."""
    from roost.runtime.restate import _runtime

    count = [0]
    original = getattr(_runtime, "aadmin_query", None)
    if original is None:
        yield count
        return

    async def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await original(*args, **kwargs)

    _runtime.aadmin_query = counted  # type: ignore[attr-defined]
    try:
        yield count
    finally:
        _runtime.aadmin_query = original  # type: ignore[attr-defined]


async def run_anatomy(b: Bench, prefix: str, runs: int) -> dict[str, Any]:
    key = f"target_service_key LIKE '{prefix}%'"
    by_handler = await sql(b, (
        "SELECT target_service_name AS service, target_handler_name AS handler, count(*) AS n, "
        "sum(journal_size) AS entries, sum(journal_commands_size) AS commands, sum(retry_count) AS retries "
        f"FROM sys_invocation WHERE {key} GROUP BY target_service_name, target_handler_name "
        "ORDER BY target_service_name, target_handler_name"))
    types = await sql(b, (
        "SELECT j.entry_type AS type, count(*) AS n FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
        f"WHERE i.{key} GROUP BY j.entry_type ORDER BY j.entry_type"))
    statuses = await sql(b, f"SELECT status, count(*) AS n FROM sys_invocation WHERE {key} GROUP BY status")
    per = {f"{r['service']}/{r['handler']}": r["n"] / runs for r in by_handler}
    return {
        "runs": runs,
        "invocations_per_run": sum(r["n"] for r in by_handler) / runs,
        "journal_entries_per_run": sum(r.get("entries") or 0 for r in by_handler) / runs,
        "journal_commands_per_run": sum(r.get("commands") or 0 for r in by_handler) / runs,
        "retries": sum(r.get("retries") or 0 for r in by_handler),
        "invocations_by_handler_per_run": per,
        "journal_entry_types_per_run": {r["type"]: r["n"] / runs for r in types},
        "statuses": {r["status"]: r["n"] for r in statuses},
    }


async def timeline(b: Bench, run_id: str) -> list[dict[str, Any]]:
    rows = await sql(b, (
        "SELECT target_service_name AS service, target_handler_name AS handler, invoked_by_service_name AS by, "
        "created_at, running_at, completed_at, journal_size FROM sys_invocation "
        f"WHERE target_service_key = '{run_id}' ORDER BY created_at"))
    t0 = min(ts(r["created_at"]) or 0 for r in rows)
    out = []
    for r in rows:
        c, s, d = ts(r.get("created_at")), ts(r.get("running_at")), ts(r.get("completed_at"))
        out.append({"invocation": f"{r['service']}/{r['handler']}", "by": r.get("by"),
                    "created_ms": None if c is None else round(c - t0, 1),
                    "running_ms": None if s is None else round(s - t0, 1),
                    "completed_ms": None if d is None else round(d - t0, 1),
                    "journal_entries": r.get("journal_size")})
    return out


async def m_anatomy(b: Bench) -> None:
    runs = b.n(10, 3)
    # same work: one run of each side, outputs compared field by field
    await b.roost_once("same-roost")
    res = await b.pipe.aget("same-roost")
    out = await rn.run_once(b.client, b.ingress, "same-native", TOPIC)
    roost_out = {k: v.model_dump() for k, v in res.outputs.items()}
    native_out = {k: v for k, v in out.items() if k != "approved"}
    if roost_out != native_out or out["approved"] is not True:
        raise RuntimeError(f"the two sides disagree:\nroost  {roost_out}\nnative {out}")
    b.details["same_outputs"] = roost_out
    # what each side asks of Restate per run (sequential runs)
    counts: dict[str, Counter[str]] = {}
    b.polls.clear()
    with count_admin_queries() as admin_queries:
        for side, once in (("roost", b.roost_once), ("native", b.native_once)):
            m = b.marks[side]
            m.counts.clear()
            m.on = True
            for i in range(runs):
                await once(f"anat-{side}-{i:03d}")
                if side == "roost":
                    counts["admin"] = Counter(n=admin_queries[0])
            m.on = False
            counts[side] = Counter(m.counts)
    await asyncio.sleep(0.3)  # let the last invocations' completion reach the query tables
    roost = await run_anatomy(b, "anat-roost-", runs)
    native = await run_anatomy(b, "anat-native-", runs)
    roost["ingress_requests_per_run"] = {k: v / runs for k, v in counts["roost"].items()}
    native["ingress_requests_per_run"] = {k: v / runs for k, v in counts["native"].items()}
    roost["status_polls_per_run"] = statistics.fmean(b.polls) if b.polls else 0.0
    roost["admin_queries_per_run"] = counts["admin"]["n"] / runs
    b.details["anatomy"] = {"roost": roost, "native": native,
                            "timeline_roost": await timeline(b, f"anat-roost-{runs - 1:03d}"),
                            "timeline_native": await timeline(b, f"anat-native-{runs - 1:03d}")}
    by = roost["invocations_by_handler_per_run"]
    runs_itself = sum(v for k, v in by.items() if k.endswith("/run"))
    b.rows += [
        Row("invocations", "Restate invocations per run (sys_invocation)", "/run",
            roost["invocations_per_run"], native["invocations_per_run"],
            extra={"roost": roost["invocations_by_handler_per_run"], "native": native["invocations_by_handler_per_run"]}),
        Row("run_invocations", "  of which the run itself (the workflow's main handler)", "/run",
            runs_itself, native["invocations_by_handler_per_run"].get("Newsroom/run"),
            note="the others are the client's approval calls (roost: waiting, resolve; native: "
                 "awaiting_approval, approve)"),
        Row("journal_entries", "journal entries per run (sum of journal_size)", "/run",
            roost["journal_entries_per_run"], native["journal_entries_per_run"],
            extra={"roost_types": roost["journal_entry_types_per_run"], "native_types": native["journal_entry_types_per_run"]}),
        Row("ingress_requests", "client → ingress HTTP requests per run", "/run",
            sum(roost["ingress_requests_per_run"].values()), sum(native["ingress_requests_per_run"].values()),
            extra={"roost": roost["ingress_requests_per_run"], "native": native["ingress_requests_per_run"]}),
    ]
    if roost["admin_queries_per_run"]:
        b.rows.append(Row("admin_queries", "client → admin SQL queries per run", "/run",
                          roost["admin_queries_per_run"], 0.0))


# --------------------------------------------------------------------------------------------
# 1. end-to-end latency, sequential runs


async def m_latency(b: Bench) -> None:
    warm, runs, blocks = b.n(20, 5), b.n(200, 40), 4
    per_block = runs // blocks
    lat: dict[str, list[float]] = {"roost": [], "native": []}
    ph: dict[str, list[dict[str, float]]] = {"roost": [], "native": []}
    cpu: dict[str, list[float]] = {"roost_py": [], "roost_srv": [], "native_py": [], "native_srv": []}
    for i in range(warm):
        await b.native_once(f"lw-n-{i}")
        await b.roost_once(f"lw-r-{i}")
    b.polls.clear()
    for k in range(blocks):  # alternate blocks so drift hits both sides alike
        order = ("native", "roost") if k % 2 == 0 else ("roost", "native")
        for side in order:
            c0, s0 = b.cpu()
            for i in range(per_block):
                run_id = f"lat-{side[0]}-{k}-{i}"
                times: dict[str, float] = {}
                t0 = time.perf_counter()
                if side == "roost":
                    with b.profiling("latency"):
                        await b.roost_once(run_id, times=times)
                else:
                    m = b.marks["native"]  # answers of run/send, awaiting_approval, approve
                    m.marks.clear()
                    m.on = True
                    await b.native_once(run_id)
                    m.on = False
                    times = {"started": m.marks[0][1], "seen": m.marks[1][1], "resolved": m.marks[2][1]}
                t1 = time.perf_counter()
                lat[side].append((t1 - t0) * 1e3)
                ph[side].append(phases(t0, times["started"], times["seen"], times["resolved"], t1))
            c1, s1 = b.cpu()
            cpu[f"{side}_py"].append(c1 - c0)
            cpu[f"{side}_srv"].append(s1 - s0)
    n_side = per_block * blocks
    phase_p50 = {side: {name: statistics.median(p[name] for p in ph[side]) for name in ph[side][0]} for side in ph}
    b.details["latency_phases_p50_ms"] = phase_p50
    common = {"runs": n_side, "blocks": blocks, "warm_up": warm, "poll_interval_s": b.poll,
              "status_polls_per_run_mean": statistics.fmean(b.polls) if b.polls else 0.0}
    r, n = lat["roost"], lat["native"]
    b.rows += [
        Row("latency_p50", "pipeline end-to-end latency p50 (sequential)", "ms", pct(r, 50), pct(n, 50), TARGET_RATIO,
            extra={**common, "mean": statistics.fmean(r), "native_mean": statistics.fmean(n)}),
        Row("latency_p99", "pipeline end-to-end latency p99 (sequential)", "ms", pct(r, 99), pct(n, 99), TARGET_RATIO,
            extra={**common, "max": max(r), "native_max": max(n)}),
        Row("cpu_py_latency", "CPU per run, bench process (endpoint + client)", "ms",
            sum(cpu["roost_py"]) / n_side * 1e3, sum(cpu["native_py"]) / n_side * 1e3),
        Row("cpu_srv_latency", "CPU per run, restate-server", "ms",
            sum(cpu["roost_srv"]) / n_side * 1e3, sum(cpu["native_srv"]) / n_side * 1e3),
    ]
    # a client polling the run record instead of blocking on handle.approval() (fewer runs: info only)
    polled = []
    for i in range(b.n(30, 5)):
        t0 = time.perf_counter()
        await b.roost_once(f"lat-poll-{i}", poll_record=True)
        polled.append((time.perf_counter() - t0) * 1e3)
    b.rows.append(Row("latency_p50_polled_record", "  same, roost client polling handle.record() (p50)", "ms",
                      pct(polled, 50), pct(n, 50),
                      note=f"the client reads the run record every {b.poll} s until it waits (info)",
                      extra={"runs": len(polled), "p99": pct(polled, 99)}))


# --------------------------------------------------------------------------------------------
# 2. throughput, 16 runs in flight


async def m_throughput(b: Bench) -> None:
    n, warm, repeats = b.n(400, 80), 2 * IN_FLIGHT, b.n(2, 1)
    rates: dict[str, list[float]] = {"roost": [], "native": []}
    cpu: dict[str, list[float]] = {"roost_py": [], "roost_srv": [], "native_py": [], "native_srv": []}
    b.polls.clear()
    for rep in range(repeats):
        order = ("native", "roost") if rep % 2 == 0 else ("roost", "native")
        for side in order:
            once = b.roost_once if side == "roost" else b.native_once
            await bounded(warm, IN_FLIGHT, lambda i, s=side, r=rep, f=once: f(f"tw-{s[0]}-{r}-{i}"))
            c0, s0 = b.cpu()
            t0 = time.perf_counter()
            with b.profiling("throughput") if side == "roost" else contextlib.nullcontext():
                await bounded(n, IN_FLIGHT, lambda i, s=side, r=rep, f=once: f(f"tp-{s[0]}-{r}-{i}"))
            rates[side].append(n / (time.perf_counter() - t0))
            c1, s1 = b.cpu()
            cpu[f"{side}_py"].append((c1 - c0) / n)
            cpu[f"{side}_srv"].append((s1 - s0) / n)
    b.rows += [
        Row("throughput", f"pipeline throughput, {IN_FLIGHT} runs in flight", "runs/s",
            statistics.median(rates["roost"]), statistics.median(rates["native"]), 1 / TARGET_RATIO,
            higher_is_better=True,
            extra={"runs": n, "repeats": repeats, "roost_rates": rates["roost"], "native_rates": rates["native"],
                   "status_polls_per_run_mean": statistics.fmean(b.polls) if b.polls else None}),
        Row("cpu_py_throughput", f"CPU per run at {IN_FLIGHT} in flight, bench process", "ms",
            statistics.fmean(cpu["roost_py"]) * 1e3, statistics.fmean(cpu["native_py"]) * 1e3),
        Row("cpu_srv_throughput", f"CPU per run at {IN_FLIGHT} in flight, restate-server", "ms",
            statistics.fmean(cpu["roost_srv"]) * 1e3, statistics.fmean(cpu["native_srv"]) * 1e3),
    ]


# --------------------------------------------------------------------------------------------
# 3. per-step overhead


async def m_step(b: Bench) -> None:
    repeats = b.n(21, 3)
    e2e: dict[str, list[float]] = {"roost": [], "native": []}
    for d in (LOOPS, LOOP_CPU):
        d["roost"].clear()
        d["native"].clear()
    for i in range(repeats + 1):  # the first of each is a warm-up
        # start, and only wait for the result once the loop is over: the client's own requests
        # (its status reads) run on this event loop too and would stall the endpoint mid-loop
        LOOP_DONE.append(asyncio.Event())
        t0 = time.perf_counter()
        with b.profiling("step"):
            handle = await b.steps.start(Msg(n=N_STEPS), run_id=f"steps-{i}")
            await asyncio.wait_for(LOOP_DONE[-1].wait(), 120)
            res = await handle.result(timeout=120)
        e2e["roost"].append(time.perf_counter() - t0)
        assert res["orch"].n == N_STEPS
        t0 = time.perf_counter()
        resp = await b.client.post(f"{b.ingress}/NativeSteps/loop", json=N_STEPS)
        resp.raise_for_status()
        e2e["native"].append(time.perf_counter() - t0)
    roost_s = statistics.median(LOOPS["roost"][1:])
    native_s = statistics.median(LOOPS["native"][1:])
    # the overhead from pairs (roost loop i, native loop i, run back to back): less drift than a
    # difference of two medians when the machine's load moves
    paired = statistics.median(r - n for r, n in zip(LOOPS["roost"][1:], LOOPS["native"][1:], strict=True))
    extra = {"n_steps": N_STEPS, "repeats": repeats, "roost_loops_s": LOOPS["roost"], "native_loops_s": LOOPS["native"],
             "overhead_from_medians_ms": (roost_s - native_s) / N_STEPS * 1e3,
             "roost_invocation_wall_s_median": statistics.median(e2e["roost"][1:]),
             "native_invocation_wall_s_median": statistics.median(e2e["native"][1:])}
    b.rows += [
        Row("step_time", f"time per step, N={N_STEPS} no-op steps in one handler", "ms",
            roost_s / N_STEPS * 1e3, native_s / N_STEPS * 1e3, extra=extra,
            note="roost: ctx.step in an orchestration agent; native: bare ctx.run_typed in a Service handler"),
        Row("step_overhead", "overhead per step, (roost − native) / N (median of pairs)", "ms", paired / N_STEPS * 1e3),
        Row("step_cpu", "  bench-process CPU per step (endpoint side)", "ms",
            statistics.median(LOOP_CPU["roost"][1:]) / N_STEPS * 1e3, statistics.median(LOOP_CPU["native"][1:]) / N_STEPS * 1e3,
            extra={"roost_cpu_s": LOOP_CPU["roost"], "native_cpu_s": LOOP_CPU["native"]}),
    ]


# --------------------------------------------------------------------------------------------
# 4. the demo as shipped (with its 50 ms sleeps): examples/newsroom.py's agents vs restate_native.build_app()


async def m_demo(b: Bench) -> None:
    runs = b.n(30, 5)
    demo = b.roost_app(_demo.shipped_pipeline(), "newsroom")
    await demo.runtime()
    # re-register the native "Newsroom" workflow from the example itself (with its sleeps)
    uri = await b.serve_native(rn.build_app())
    deadline = time.monotonic() + 10
    while (await b.client.get(f"{b.admin}/services/Newsroom")).json().get("deployment_id") is None or \
            not await _served_by(b, uri):
        if time.monotonic() > deadline:
            raise RuntimeError("the demo's Newsroom deployment did not take over")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # and the ingress/partitions see it
    pipe = b.pipe
    b.pipe = demo
    try:
        lat: dict[str, list[float]] = {"roost": [], "native": []}
        for i in range(runs + 2):
            for side in ("native", "roost"):
                t0 = time.perf_counter()
                if side == "roost":
                    await b.roost_once(f"demo-r-{i}")
                else:
                    await b.native_once(f"demo-n-{i}")
                lat[side].append((time.perf_counter() - t0) * 1e3)
    finally:
        b.pipe = pipe
    r, n = lat["roost"][2:], lat["native"][2:]
    b.rows.append(Row("demo_latency_p50", "demo as shipped (50 ms sleeps), latency p50 (sequential)", "ms",
                      pct(r, 50), pct(n, 50), extra={"runs": runs, "p99": pct(r, 99), "native_p99": pct(n, 99)},
                      note="examples/newsroom.py's agents vs restate_native.build_app(); info only"))


# --------------------------------------------------------------------------------------------
# 5. each=True fan-out + gather: roost on Restate against roost's embedded runtime, same app


async def m_fanout(b: Bench) -> None:
    sizes = (100, 1_000) if b.quick else (1_000, 10_000)
    app = b.roost_app(_fanout_side.agents(), "fanout", max_activations=4 * max(sizes) + 100)
    await app.runtime()
    await b.until_ok("roost fan-out", lambda k: app.arun(_fanout_side.bf.Job(n=1), run_id=f"probe-f-{k}", timeout=30))
    rows, _ = await _fanout_side.measure("restate", app, b.tmp, sizes, Row)
    b.rows += rows


async def _served_by(b: Bench, uri: str) -> bool:
    service = (await b.client.get(f"{b.admin}/services/Newsroom")).json()
    deployment = (await b.client.get(f"{b.admin}/deployments/{service['deployment_id']}")).json()
    return bool(deployment.get("uri", "").rstrip("/") == uri.rstrip("/"))


# --------------------------------------------------------------------------------------------

MEASUREMENTS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "anatomy": m_anatomy, "latency": m_latency, "throughput": m_throughput, "step": m_step, "fanout": m_fanout,
    "demo": m_demo,
}


def machine_info(server_binary: Path | None) -> dict[str, Any]:
    return {**_common.host_info(load_average_at_end=os.getloadavg()),
            "restate_server": binary_version(server_binary) if server_binary else None,
            **_common.package_versions("restate-sdk", "hypercorn", "httpx", "pydantic")}


def print_profile(prof: cProfile.Profile, name: str) -> None:
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(35)
        print(f"== {name} (roost side): top 35 by {key} ==\n{s.getvalue()}")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(r"src/roost/", 40)
    print(f"== {name} (roost side): roost's own functions by cumulative time ==\n{s.getvalue()}")


async def amain(names: list[str], args: argparse.Namespace, tmp: Path) -> tuple[Bench, dict[str, float]]:
    b = Bench(tmp, args.quick, args.poll_ms / 1000, args.profile)
    return b, await _common.run_measurements(b, names, MEASUREMENTS)


def main() -> None:
    p = _common.arg_parser(__doc__, MEASUREMENTS)
    p.add_argument("--profile", choices=["latency", "throughput", "step"],
                   help="cProfile the roost side of one measurement (this process: endpoint and client)")
    p.add_argument("--poll-ms", type=float, default=50.0,
                   help="roost client: interval between run-status reads while waiting for the approval (50)")
    _common.add_out(p, RESULTS)
    args = p.parse_args()
    names = _common.chosen(p, args.only, MEASUREMENTS)
    if args.profile and args.profile not in names:
        names.append(args.profile)
    names = [n for n in MEASUREMENTS if n in names]  # fixed order: demo re-registers "Newsroom", so it runs last
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-restate-"))
    sources, load_start = _common.source_state(), os.getloadavg()  # before the run: what it imports
    try:
        b, timings = asyncio.run(amain(names, args, tmp))
        binary = find_restate_server(install=False, root=ROOT)
        info = {"git_commit": sources, "load_average_at_start": load_start, **machine_info(binary)}
        if b.prof is not None and args.profile:
            print_profile(b.prof, args.profile)
        print(f"\nroost on Restate vs the raw Restate SDK — {info['nproc']} CPU ({info['cpu']}), Python {info['python']}, "
              f"restate-server {info['restate_server']}, restate-sdk {info.get('restate-sdk')}, roost at {sources}"
              f"{' (quick)' if args.quick else ''}\n")
        print_results(b.rows, b.details, "roost on Restate", "native Restate SDK")
        if args.profile:
            return  # a profiled run's figures are distorted: not written
        _common.write_json(Path(args.out), {
            "machine": info, "quick": args.quick, "measurement_seconds": timings,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "poll_interval_ms": args.poll_ms,
            "rows": [r.as_json() for r in b.rows], "details": b.details})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
