"""Benchmarks of roost's embedded (local, SQLite) runtime against a plain-asyncio baseline.

Run from the repository root with the project's venv:

    .venv/bin/python bench/bench_local.py                    # everything (~3-4 minutes)
    .venv/bin/python bench/bench_local.py --only step,latency
    .venv/bin/python bench/bench_local.py --quick            # smaller counts, a smoke test
    .venv/bin/python bench/bench_local.py --profile throughput   # cProfile of one measurement (process mode)

Measurements (``--only`` names): step, latency, fanout, throughput, memory, restart.
Prints a markdown table and writes bench/results/local.json. Journals live in a temporary
directory that is deleted at the end. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import add_out, arg_parser, bounded, chosen, host_info, pct, timed, write_json  # bench/ is on sys.path
from pydantic import BaseModel

from roost import App, agent
from roost.runtime.local import LocalRuntime

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "local.json"
MODES = ("process", "machine", "memory")
BLOCK_ENV = "ROOST_BENCH_BLOCK"  # restart benchmark: the entry step blocks while this is "1"


class Msg(BaseModel):
    n: int


# --------------------------------------------------------------------------------------------
# helpers


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Row:
    id: str
    metric: str
    mode: str  # process | machine | memory | baseline-only rows use the roost mode they describe
    unit: str
    measured: float
    baseline: float | None = None  # plain asyncio, same functions, no roost
    target: float | None = None
    higher_is_better: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        ok = self.measured >= self.target if self.higher_is_better else self.measured <= self.target
        return "pass" if ok else "MISS"


class Bench:
    def __init__(self, tmp: Path, quick: bool) -> None:
        self.tmp = tmp
        self.quick = quick
        self.rows: list[Row] = []
        self.seq = 0

    def journal(self, tag: str) -> str:
        self.seq += 1
        return str(self.tmp / f"{self.seq:03d}-{tag}.db")

    def app(self, agents: list[Any], mode: str, tag: str) -> App:
        return App(agents, journal=self.journal(f"{tag}-{mode}"), durability=mode)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        if abs(v) < 0.01:
            return f"{v * 1000:.2f} µs"
        return f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms"
    if unit == "runs/s":
        return f"{v:,.0f} runs/s"
    if unit == "MB":
        return f"{v:.1f} MB"
    if unit == "s":
        return f"{v:.2f} s"
    return f"{v:g} {unit}"


def target_text(r: Row) -> str:
    if r.target is None:
        return "-"
    return ("≥ " if r.higher_is_better else "≤ ") + fmt(r.target, r.unit)


def table(rows: list[Row]) -> str:
    out = [
        "| measurement | mode | target | measured | baseline (asyncio) | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r.metric} | {r.mode} | {target_text(r)} | {fmt(r.measured, r.unit)} | "
                   f"{fmt(r.baseline, r.unit)} | {r.verdict} |")
    return "\n".join(out)





# --------------------------------------------------------------------------------------------
# 1. overhead per journaled ctx.step


async def noop() -> None:
    return None


async def m_step(b: Bench) -> None:
    n_steps = 2000
    repeats = b.n(7, 3)
    loop_times: dict[str, list[float]] = {}

    async def orchestrate(inp: Msg, ctx: Any) -> Msg:
        t0 = time.perf_counter()
        for _ in range(n_steps):
            await ctx.step("noop", noop)
        loop_times[current].append(time.perf_counter() - t0)
        return inp

    async def direct() -> float:
        t0 = time.perf_counter()
        for _ in range(n_steps):
            await noop()
        return time.perf_counter() - t0

    base = [await direct() for _ in range(repeats + 1)][1:]
    base_s = statistics.median(base)
    results: dict[str, float] = {}
    for current in ("memory", "process", "machine"):
        loop_times[current] = []
        app = b.app([agent("orch").contracts(input=Msg, output=Msg).engine(orchestrate)], current, "step")
        run_times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            await app.arun(Msg(n=i))
            run_times.append(time.perf_counter() - t0)
        await app.aclose()
        roost_s = statistics.median(loop_times[current][1:])  # first run is a warm-up
        results[current] = roost_s
        over_ms = (roost_s - base_s) / n_steps * 1e3
        b.rows.append(Row(
            "step_overhead", f"overhead per ctx.step (N={n_steps})", current, "ms", over_ms,
            baseline=base_s / n_steps * 1e3, target=0.3 if current == "process" else None,
            note="baseline column: time of one direct `await noop()` (overhead is measured minus that)",
            extra={"roost_loop_s": roost_s, "baseline_loop_s": base_s, "run_s_median": statistics.median(run_times[1:]),
                   "per_step_ms": roost_s / n_steps * 1e3, "baseline_per_call_ms": base_s / n_steps * 1e3},
        ))
    # what the journal write alone costs: process minus memory
    b.rows[-2].extra["journal_cost_ms"] = (results["process"] - results["memory"]) / n_steps * 1e3
    b.rows[-1].extra["journal_cost_ms"] = (results["machine"] - results["memory"]) / n_steps * 1e3


# --------------------------------------------------------------------------------------------
# 2. send -> react latency, 1-agent end-to-end latency


async def m_latency(b: Bench) -> None:
    warm, runs = b.n(100, 30), b.n(1000, 200)
    a_end: dict[int, float] = {}
    b_start: dict[int, float] = {}

    async def fa(x: Msg) -> Msg:
        a_end[x.n] = time.perf_counter()
        return x

    async def fb(x: Msg) -> Msg:
        b_start[x.n] = time.perf_counter()
        return x

    def fa_sync(x: Msg) -> Msg:
        a_end[x.n] = time.perf_counter()
        return x

    def fb_sync(x: Msg) -> Msg:
        b_start[x.n] = time.perf_counter()
        return x

    def gaps() -> list[float]:
        return [(b_start[k] - a_end[k]) * 1e3 for k in range(warm, warm + runs)]

    # baseline: the two functions awaited one after the other
    a_end.clear()
    b_start.clear()
    for i in range(warm + runs):
        await fb(await fa(Msg(n=i)))
    base = gaps()
    base_p50, base_p99 = pct(base, 50), pct(base, 99)

    for variant, (f1, f2) in (("async", (fa, fb)), ("sync", (fa_sync, fb_sync))):
        modes = ("memory", "process", "machine") if variant == "async" else ("process",)
        for mode in modes:
            a = agent("a").contracts(input=Msg, output=Msg).engine(f1)
            bb = agent("b").contracts(input=Msg, output=Msg).engine(f2).reacts_to(a)
            app = b.app([a, bb], mode, f"chain-{variant}")
            a_end.clear()
            b_start.clear()
            for i in range(warm + runs):
                await app.arun(Msg(n=i))
            await app.aclose()
            g = gaps()
            label = "send→react a→b" + ("" if variant == "async" else " (sync fns: thread pool)")
            for p, base_v in ((50, base_p50), (99, base_p99)):
                b.rows.append(Row(
                    f"send_react_p{p}_{variant}", f"{label} p{p}", mode, "ms", pct(g, p), baseline=base_v,
                    target=1.0 if (p == 50 and mode == "process" and variant == "async") else None,
                    extra={"runs": runs, "mean": statistics.fmean(g), "max": max(g)},
                ))

    # end-to-end: app.arun of a one-agent app, from call to typed result
    async def one(x: Msg) -> Msg:
        return x

    t_base = []
    for i in range(warm + runs):
        t0 = time.perf_counter()
        await one(Msg(n=i))
        t_base.append((time.perf_counter() - t0) * 1e3)
    t_base = t_base[warm:]
    for mode in ("memory", "process", "machine"):
        app = b.app([agent("one").contracts(input=Msg, output=Msg).engine(one)], mode, "e2e")
        t = []
        for i in range(warm + runs):
            t0 = time.perf_counter()
            await app.arun(Msg(n=i))
            t.append((time.perf_counter() - t0) * 1e3)
        await app.aclose()
        t = t[warm:]
        for p in (50, 99):
            b.rows.append(Row(f"e2e_1agent_p{p}", f"end-to-end 1-agent arun p{p}", mode, "ms", pct(t, p),
                              baseline=pct(t_base, p), extra={"runs": runs}))


# --------------------------------------------------------------------------------------------
# 3. fan-out to 10 and converge


def fanout_agents(width: int = 10) -> tuple[list[Any], Callable[[Msg], Awaitable[Msg]]]:
    async def entry(x: Msg) -> Msg:
        return x

    def branch(i: int) -> Callable[[Msg], Awaitable[Msg]]:
        async def f(x: Msg) -> Msg:
            return Msg(n=x.n + i)
        return f

    async def join(*xs: Msg) -> Msg:
        return Msg(n=sum(x.n for x in xs))

    e = agent("entry").contracts(input=Msg, output=Msg).engine(entry)
    fs = [agent(f"f{i}").contracts(input=Msg, output=Msg).engine(branch(i)).reacts_to(e) for i in range(width)]
    c = agent("join").contracts(input=tuple([Msg] * width), output=Msg).engine(join).reacts_to(*fs)
    branches = [branch(i) for i in range(width)]

    async def direct(x: Msg) -> Msg:
        r = await entry(x)
        outs = await asyncio.gather(*(f(r) for f in branches))
        return await join(*outs)

    return [e, *fs, c], direct


async def m_fanout(b: Bench) -> None:
    warm, runs = b.n(20, 5), b.n(300, 50)
    agents, direct = fanout_agents()
    tb = []
    for i in range(warm + runs):
        t0 = time.perf_counter()
        await direct(Msg(n=i))
        tb.append((time.perf_counter() - t0) * 1e3)
    tb = tb[warm:]
    for mode in ("memory", "process", "machine"):
        app = b.app(agents, mode, "fanout")
        t = []
        for i in range(warm + runs):
            t0 = time.perf_counter()
            res = await app.arun(Msg(n=i))
            t.append((time.perf_counter() - t0) * 1e3)
        assert res["join"].n == 10 * (warm + runs - 1) + 45, res["join"]
        await app.aclose()
        t = t[warm:]
        b.rows.append(Row("fanout10_p50", "fan-out 10 + converge, per run p50", mode, "ms", pct(t, 50),
                          baseline=pct(tb, 50), target=2.0 if mode == "process" else None,
                          extra={"p99": pct(t, 99), "baseline_p99": pct(tb, 99), "runs": runs, "activations_per_run": 12}))


# --------------------------------------------------------------------------------------------
# 4. throughput, 5. memory growth: three-agent chain a -> b -> c


def chain3(sync: bool) -> tuple[list[Any], Callable[[Msg], Awaitable[Msg]]]:
    if sync:
        def s1(x: Msg) -> Msg:
            return Msg(n=x.n + 1)

        def s2(x: Msg) -> Msg:
            return Msg(n=x.n * 2)

        def s3(x: Msg) -> Msg:
            return Msg(n=x.n - 1)

        async def direct_sync(x: Msg) -> Msg:
            return s3(s2(s1(x)))

        fns: tuple[Any, Any, Any] = (s1, s2, s3)
        direct: Callable[[Msg], Awaitable[Msg]] = direct_sync
    else:
        async def a1(x: Msg) -> Msg:
            return Msg(n=x.n + 1)

        async def a2(x: Msg) -> Msg:
            return Msg(n=x.n * 2)

        async def a3(x: Msg) -> Msg:
            return Msg(n=x.n - 1)

        async def direct_async(x: Msg) -> Msg:
            return await a3(await a2(await a1(x)))

        fns, direct = (a1, a2, a3), direct_async
    a = agent("a").contracts(input=Msg, output=Msg).engine(fns[0])
    bb = agent("b").contracts(input=Msg, output=Msg).engine(fns[1]).reacts_to(a)
    c = agent("c").contracts(input=Msg, output=Msg).engine(fns[2]).reacts_to(bb)
    return [a, bb, c], direct


async def throughput(app: App | None, direct: Callable[[Msg], Awaitable[Msg]], n: int, conc: int) -> float:
    async def via_roost(i: int) -> None:
        assert app is not None
        res = await app.arun(Msg(n=i))
        assert res["c"].n == (i + 1) * 2 - 1

    async def via_direct(i: int) -> None:
        await direct(Msg(n=i))

    t0 = time.perf_counter()
    await bounded(n, conc, via_roost if app is not None else via_direct)
    return n / (time.perf_counter() - t0)


async def m_throughput(b: Bench) -> None:
    conc = 100
    n = b.n(3000, 600)
    plan = [(False, "process", n), (False, "memory", n), (True, "process", n), (True, "memory", n),
            (False, "machine", b.n(1000, 200))]
    base_cache: dict[bool, float] = {}
    for sync, mode, runs in plan:
        agents, direct = chain3(sync)
        if sync not in base_cache:
            await throughput(None, direct, 200, conc)
            base_cache[sync] = statistics.median([await throughput(None, direct, n, conc) for _ in range(3)])
        app = b.app(agents, mode, "tput")
        await throughput(app, direct, 100, conc)  # warm-up
        rate = await throughput(app, direct, runs, conc)
        await app.aclose()
        fn = "sync fns" if sync else "async fns"
        b.rows.append(Row(f"throughput_{'sync' if sync else 'async'}", f"throughput a→b→c, {conc} in flight ({fn})",
                          mode, "runs/s", rate, baseline=base_cache[sync], higher_is_better=True,
                          target=2500.0 if mode == "process" else None, extra={"runs": runs, "in_flight": conc}))


async def child_memory(mode: str, n: int, warm: int, journal: str) -> None:
    """Runs in its own process, so heap high-water marks of other measurements do not hide growth."""
    conc = 100
    agents, _ = chain3(sync=False)
    app = App(agents, journal=journal, durability=mode)

    async def run(i: int) -> None:
        await app.arun(Msg(n=i))

    await bounded(warm, conc, run)
    gc.collect()
    start = rss_mb()
    samples = [(0, start)]
    chunk = n // 10
    t0 = time.perf_counter()
    for k in range(10):
        await bounded(chunk, conc, lambda i, base=warm + k * chunk: run(base + i))
        gc.collect()
        samples.append(((k + 1) * chunk, rss_mb()))
    elapsed = time.perf_counter() - t0
    rt: Any = await app.runtime()  # the runtime of this event loop
    internals = {"live_runs": len(rt._live), "locks": len(rt._locks), "tasks": len(rt._tasks), "waiters": sum(len(live.waiters) for live in rt._live.values()), "queued": len(rt._queue._specs)}
    await app.aclose()
    print(json.dumps({"rss_start_mb": start, "samples_runs_mb": samples, "elapsed_s": elapsed,
                      "runtime_internals_after": internals}))


async def m_memory(b: Bench) -> None:
    warm = 500
    n = b.n(10_000, 2000)
    env = {k: v for k, v in os.environ.items() if k != BLOCK_ENV}
    for mode in ("process", "memory"):
        res = await asyncio.to_thread(run_child, ["_child-memory", mode, str(n), str(warm), b.journal(f"rss-{mode}")], env)
        samples = res["samples_runs_mb"]
        growth = samples[-1][1] - samples[0][1]
        note = ("in-memory SQLite keeps the whole journal (every run) in RAM, so it grows by design"
                if mode == "memory" else "")
        b.rows.append(Row("rss_growth", f"RSS growth over {n:,} runs (after {warm} warm-up)", mode, "MB", growth,
                          target=50.0 if mode == "process" else None, note=note,
                          extra={**res, "growth_last_half_mb": samples[-1][1] - samples[5][1]}))


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# 6. restart with 1,000 unfinished runs (three processes: blocker, killed; resumer; fresh reference)


async def restart_fa(x: Msg) -> Msg:
    if os.environ.get(BLOCK_ENV) == "1":
        _BLOCKED[0] += 1
        if _BLOCKED[0] == _BLOCKED[1]:
            print("ready", flush=True)
        await asyncio.sleep(3600)
    return x


async def restart_fb(x: Msg) -> Msg:
    return Msg(n=x.n + 1)


_BLOCKED = [0, 0]  # entered, expected


def restart_app(journal: str, max_running: int | None = None) -> App:
    a = agent("a").contracts(input=Msg, output=Msg).engine(restart_fa)
    bb = agent("b").contracts(input=Msg, output=Msg).engine(restart_fb).reacts_to(a)
    if max_running is None:
        return App([a, bb], name="restart", journal=journal, durability="process")
    # All n runs must be inside their blocking step at once: room for n executing activations.
    runtime = LocalRuntime(journal, durability="process", max_running=max_running)
    return App([a, bb], name="restart", runtime=runtime)


async def child_block(journal: str, n: int) -> None:
    _BLOCKED[1] = n
    app = restart_app(journal, max_running=n)
    for i in range(n):
        await app.start(Msg(n=i), run_id=f"r{i:05d}")
    await asyncio.sleep(3600)  # killed with SIGKILL while every run is inside its entry step


async def child_resume(journal: str, n: int) -> None:
    t0 = time.perf_counter()
    app = restart_app(journal)
    rt = await app.runtime()  # opens the journal and adopts every unfinished run of a dead owner
    t_open = time.perf_counter() - t0
    lives = list(rt._live.values())  # type: ignore[attr-defined]
    await asyncio.gather(*(lv.done.wait() for lv in lives))
    t_done = time.perf_counter() - t0
    await app.aclose()
    db = sqlite3.connect(journal)
    counts = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    db.close()
    print(json.dumps({"adopted": len(lives), "open_s": t_open, "all_done_s": t_done, "status_counts": counts}))


async def child_fresh(journal: str, n: int) -> None:
    t0 = time.perf_counter()
    app = restart_app(journal)
    handles = [await app.start(Msg(n=i), run_id=f"r{i:05d}") for i in range(n)]
    await asyncio.gather(*(h.result() for h in handles))
    t_done = time.perf_counter() - t0
    await app.aclose()
    print(json.dumps({"all_done_s": t_done}))


def run_child(args: list[str], env: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def m_restart(b: Bench) -> None:
    n = b.n(1000, 200)
    journal = b.journal("restart")
    env = dict(os.environ)
    env.pop(BLOCK_ENV, None)
    # 1. a process starts n runs, each blocks inside its entry step; SIGKILL it by pid
    proc = subprocess.Popen([sys.executable, __file__, "_child-block", journal, str(n)],  # noqa: ASYNC220 (non-blocking)
                            env={**env, BLOCK_ENV: "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    t_block = time.perf_counter() - t0
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"blocker did not get ready: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    db = sqlite3.connect(journal)
    unfinished = db.execute("SELECT count(*) FROM runs WHERE status='running'").fetchone()[0]
    db.close()
    # 2. a fresh process opens the journal and finishes them (the step does not block now)
    t1 = time.perf_counter()
    res = await asyncio.to_thread(run_child, ["_child-resume", journal, str(n)], env)
    wall = time.perf_counter() - t1
    # 3. reference: the same n runs started fresh, all in flight at once, in a new process
    ref = await asyncio.to_thread(run_child, ["_child-fresh", b.journal("restart-ref"), str(n)], env)
    completed = res["status_counts"].get("completed", 0)
    b.rows.append(Row(
        "restart", f"restart: open + finish {n:,} unfinished runs", "process", "s", res["all_done_s"],
        baseline=None, target=2.0,
        note="baseline column: not applicable; reference = same runs started fresh in a new process",
        extra={"unfinished_before": unfinished, "adopted": res["adopted"], "completed_after": completed,
               "open_s": res["open_s"], "process_wall_s": wall, "fresh_runs_reference_s": ref["all_done_s"],
               "blocker_setup_s": t_block},
    ))
    if completed != n or unfinished != n:
        b.rows[-1].note += f"; WARNING: {unfinished} unfinished before, {completed} completed after"


# --------------------------------------------------------------------------------------------

MEASUREMENTS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "step": m_step, "latency": m_latency, "fanout": m_fanout,
    "throughput": m_throughput, "memory": m_memory, "restart": m_restart,
}


def machine_info() -> dict[str, Any]:
    return host_info(sqlite=sqlite3.sqlite_version)


def profile(name: str, tmp: Path) -> None:
    """cProfile the process-mode part of one measurement; prints the top functions."""
    b = Bench(tmp, quick=True)
    orig_app = b.app

    def only_process(agents: list[Any], mode: str, tag: str) -> App:
        return orig_app(agents, "process", tag)

    b.app = only_process  # type: ignore[method-assign]
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(MEASUREMENTS[name](b))
    prof.disable()
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(30)
        print(f"== {name}: top 30 by {key} ==\n{s.getvalue()}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_child-"):
        if sys.argv[1] == "_child-memory":
            mode, n, warm, journal = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
            asyncio.run(child_memory(mode, n, warm, journal))
            return
        kind, journal, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        fn = {"_child-block": child_block, "_child-resume": child_resume, "_child-fresh": child_fresh}[kind]
        asyncio.run(fn(journal, n))
        return
    p = arg_parser(__doc__, MEASUREMENTS)
    p.add_argument("--profile", choices=list(MEASUREMENTS), help="cProfile one measurement in process mode")
    add_out(p, RESULTS)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    try:
        if args.profile:
            profile(args.profile, tmp)
            return
        names = chosen(p, args.only, MEASUREMENTS)
        b = Bench(tmp, args.quick)
        timings: dict[str, float] = {}
        for name in names:
            with timed(name, timings):
                asyncio.run(MEASUREMENTS[name](b))
        info = machine_info()
        print(f"\nroost local runtime — {info['nproc']} CPU ({info['cpu']}), Python {info['python']}, "
              f"SQLite {info['sqlite']}{' (quick)' if args.quick else ''}\n")
        print(table(b.rows))
        notes = [f"- {r.metric} ({r.mode}): {r.note}" for r in b.rows if r.note]
        if notes:
            print("\n" + "\n".join(notes))
        write_json(Path(args.out), {
            "machine": info, "quick": args.quick, "measurement_seconds": timings,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rows": [{**asdict(r), "verdict": r.verdict} for r in b.rows]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
