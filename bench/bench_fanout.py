"""Benchmark of ``each=True`` dynamic fan-out + gather on roost's embedded (local, SQLite) runtime,
side by side with the same fan-out hand-written on asyncio + sqlite3.

Run from the repository root with the project's venv:

    .venv/bin/python bench/bench_fanout.py                       # 1,000 / 10,000 / 100,000 items
    .venv/bin/python bench/bench_fanout.py --quick               # 100 / 1,000 items: a smoke test
    .venv/bin/python bench/bench_fanout.py --sizes 1000,2000     # other sizes
    .venv/bin/python bench/bench_fanout.py --only roost          # one side (names below)

Sides (``--only`` names): native, native-per-item, roost.

Pipeline: ``split`` (Job(n) -> list[Item], n items) -> ``worker`` (reacts_to(split, each=True), a plain
sync function, Item -> Done) -> ``join`` (list[Done] -> Summary(count, checksum)). The checksum folds
the items in order, so a join that gets a missing, extra or reordered item fails the benchmark
(exit status 1), and so does a side that crashes.

Every (side, size) runs in a fresh child process with a fresh journal in a temporary directory, so
peak RSS (``ru_maxrss``) is per size. A child gets at most ``--timeout`` seconds (default: 0.009 s
per item, at least 120 s, at most 900 s: 15 min for 100,000 items); a timeout is reported as a miss,
and the larger sizes of that side are then skipped (counted as misses too).

Prints a markdown table and writes bench/results/fanout.json. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from _common import add_out, arg_parser, chosen, host_info, package_versions, source_state, timed, write_json
from _report import Row  # bench/ is on sys.path when run as a script
from pydantic import BaseModel

from roost import App, agent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fanout.json"
SIDES = ("native", "native-per-item", "roost")  # run in this order for every size
DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000)
GROUP_COMMIT_ROWS = 1_000  # native: at most this many result rows per transaction
TARGET_10K_S = 10.0  # 10,000 items in at most 10 s
TARGET_100K_RSS_MB = 1024.0  # 100,000 items complete with peak RSS at most 1 GB
TARGET_SCALING = 12.0  # time(10k)/time(1k) and time(100k)/time(10k) at most 12
SCALING_PAIRS = ((1_000, 10_000), (10_000, 100_000))  # the pairs the scaling target applies to
MOD = (1 << 61) - 1


def default_timeout(n: int) -> float:
    return min(900.0, max(120.0, 0.009 * n))


# --------------------------------------------------------------------------------------------
# the pipeline: the very same models and functions on both sides


class Job(BaseModel):
    n: int


class Item(BaseModel):
    index: int


class Done(BaseModel):
    index: int
    value: int


class Summary(BaseModel):
    count: int
    checksum: int


def item_value(i: int) -> int:
    return i * 2654435761 % 4294967296  # Knuth's multiplicative hash: the trivial work per item


def split(job: Job) -> list[Item]:
    return [Item(index=i) for i in range(job.n)]


def work(item: Item) -> Done:
    return Done(index=item.index, value=item_value(item.index))


def join(done: list[Done]) -> Summary:
    checksum = 0
    for d in done:  # a polynomial fold: depends on the order of the items
        checksum = (checksum * 1_000_003 + d.value) % MOD
    return Summary(count=len(done), checksum=checksum)


def expected(n: int) -> Summary:
    """What the join must return, computed straight from the indexes (no models, no runtime)."""
    checksum = 0
    for i in range(n):
        checksum = (checksum * 1_000_003 + item_value(i)) % MOD
    return Summary(count=n, checksum=checksum)


def check(side: str, n: int, got: Any) -> None:
    want = expected(n)
    if not isinstance(got, Summary) or got != want:
        raise AssertionError(f"WRONG RESULT ({side}, {n:,} items): join returned {got!r}, expected {want!r}")


# --------------------------------------------------------------------------------------------
# the children: one (side, size) per process


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def file_sizes(db: Path) -> dict[str, int]:
    return {suffix or "db": os.path.getsize(f"{db}{suffix}") if os.path.exists(f"{db}{suffix}") else 0
            for suffix in ("", "-wal", "-shm")}


def journal_mb(sizes: dict[str, int]) -> float:
    return (sizes["db"] + sizes["-wal"]) / 1e6


async def child_roost(n: int, db: Path) -> dict[str, Any]:
    s = agent("split").contracts(input=Job, output=list[Item]).engine(split)
    w = agent("worker").contracts(input=Item, output=Done).engine(work).reacts_to(s, each=True)
    j = agent("join").contracts(input=list[Done], output=Summary).engine(join).reacts_to(w)
    # Every item is an activation of worker and then of join (a gather contribution): 2n + 1.
    app = App([s, w, j], name="fanout", journal=db, durability="process", max_activations=4 * n + 100)
    t0 = time.perf_counter()
    await app.runtime("local")  # opens the journal (schema, checkpointer) outside the timed part
    open_s = time.perf_counter() - t0
    rss_before, cpu0 = peak_rss_mb(), time.process_time()
    t0 = time.perf_counter()
    res = await app.arun(Job(n=n), run_id=f"fanout-{n}", mode="local")
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    check("roost", n, res["join"])
    workers = len(res.all("worker"))
    if workers != n:
        raise AssertionError(f"WRONG RESULT (roost, {n:,} items): worker ran {workers:,} times")
    activations = len(res.record.activations)
    del res
    at_end = file_sizes(db)
    await app.aclose()
    return {"wall_s": wall, "cpu_s": cpu, "open_s": open_s, "rss_before_run_mb": rss_before,
            "activations": activations, "files_at_end": at_end, "files_after_close": file_sizes(db)}


_SCHEMA = """
CREATE TABLE runs(id TEXT PRIMARY KEY, status TEXT NOT NULL, input TEXT NOT NULL, output TEXT);
CREATE TABLE outputs(run_id TEXT NOT NULL, agent TEXT NOT NULL, idx INTEGER NOT NULL, output TEXT NOT NULL,
                     PRIMARY KEY(run_id, agent, idx)) WITHOUT ROWID;
"""


async def child_native(n: int, db_path: Path, batch: int) -> dict[str, Any]:
    """The fan-out by hand: asyncio tasks for the items, each one's result row committed (by a writer
    task, at most ``batch`` rows per transaction) before that item counts as done; then the join
    reads the committed rows back in order, as a join resumed after a crash would."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    loop = asyncio.get_running_loop()
    rss_before, cpu0 = peak_rss_mb(), time.process_time()
    t0 = time.perf_counter()
    run_id, job = f"fanout-{n}", Job(n=n)
    db.execute("INSERT INTO runs VALUES (?, 'running', ?, NULL)", (run_id, job.model_dump_json()))
    items = split(job)
    db.execute("INSERT INTO outputs VALUES (?, 'split', 0, ?)",
               (run_id, json.dumps([it.model_dump(mode="json") for it in items])))
    queue: collections.deque[tuple[int, str, asyncio.Future[None]]] = collections.deque()
    wake = asyncio.Event()
    commits = 0

    async def writer() -> None:
        nonlocal commits
        written = 0
        while written < n:
            await wake.wait()
            wake.clear()
            while queue:
                chunk = [queue.popleft() for _ in range(min(batch, len(queue)))]
                db.execute("BEGIN")
                db.executemany("INSERT INTO outputs VALUES (?, 'worker', ?, ?)",
                               [(run_id, idx, out) for idx, out, _ in chunk])
                db.execute("COMMIT")
                commits += 1
                written += len(chunk)
                for _, _, fut in chunk:
                    fut.set_result(None)

    async def worker(item: Item) -> None:
        out = work(item)  # the sync function, called directly on the loop (trivial work)
        fut = loop.create_future()
        queue.append((item.index, out.model_dump_json(), fut))
        wake.set()
        await fut  # done once its row is committed

    writing = asyncio.create_task(writer())
    await asyncio.gather(*(worker(it) for it in items))
    await writing
    rows = db.execute("SELECT output FROM outputs WHERE run_id = ? AND agent = 'worker' ORDER BY idx",
                      (run_id,)).fetchall()
    summary = join([Done.model_validate_json(r[0]) for r in rows])
    db.execute("UPDATE runs SET status = 'completed', output = ? WHERE id = ?", (summary.model_dump_json(), run_id))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    check("native", n, summary)
    at_end = file_sizes(db_path)
    db.close()
    return {"wall_s": wall, "cpu_s": cpu, "rss_before_run_mb": rss_before, "commits": commits,
            "files_at_end": at_end, "files_after_close": file_sizes(db_path)}


def child_main(side: str, n: int, db: Path, out: Path) -> None:
    if side == "roost":
        res = asyncio.run(child_roost(n, db))
    else:
        res = asyncio.run(child_native(n, db, GROUP_COMMIT_ROWS if side == "native" else 1))
    res |= {"peak_rss_mb": peak_rss_mb(), "journal_mb": journal_mb(res["files_at_end"]),
            "items_per_s": n / res["wall_s"]}
    out.write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------
# the parent: children, verdicts, the table


def run_child(side: str, n: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """One child; its figures with status ok, or status timeout / error (never raises, never hangs)."""
    db, out = tmp / f"{side}-{n}.db", tmp / f"{side}-{n}.json"
    try:
        proc = subprocess.run([sys.executable, __file__, "_child", side, str(n), str(db), str(out)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # the child has been killed
        return {"status": "timeout", "timeout_s": timeout}
    finally:
        for f in tmp.glob(f"{side}-{n}.db*"):
            f.unlink()
    if proc.returncode != 0 or not out.exists():
        return {"status": "error", "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
    return {"status": "ok", **json.loads(out.read_text())}


@dataclass
class FanRow(Row):
    """A row of the table: roost's figure (``measured``), the native group-commit floor (``native``)
    and native with a commit per item (``per_item``); ``limit`` is an absolute target on roost's figure."""

    per_item: float | None = None
    limit: float | None = None
    status: dict[str, str] = field(default_factory=dict)  # side -> ok | timeout | error | skipped | not run

    MET: ClassVar[str] = "MET"

    @property
    def ratio(self) -> float | None:
        return None if self.unit == "×" else super().ratio

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "info"
        roost = self.status.get("roost", "not run")
        if roost == "error":
            return "ERROR"
        if roost == "not run":
            return "-"
        return "MET" if self.measured is not None and self.measured <= self.limit else "MISSED"

    def cell(self, side: str, v: float | None) -> str:
        if v is None:
            return {"ok": "-", "not run": "-"}.get(self.status.get(side, "not run"), self.status[side])
        if self.unit == "s":
            return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
        if self.unit == "items/s":
            return f"{v:,.0f} items/s"
        if self.unit == "MB":
            return f"{v:.1f} MB"
        return f"{v:.2f}×"

    def target_text(self) -> str:
        if self.limit is None:
            return "-"
        return f"≤ {self.cell('', self.limit)}" + (" (and completes)" if self.unit == "MB" else "")


def status_text(sample: dict[str, Any] | None) -> str:
    if sample is None:
        return "not run"
    if sample["status"] == "timeout":
        return f"timeout (> {sample['timeout_s']:g} s)"
    return str(sample["status"])


def build_rows(samples: dict[tuple[str, int], dict[str, Any]], sizes: list[int]) -> list[FanRow]:
    def value(side: str, n: int, key: str) -> float | None:
        s = samples.get((side, n))
        return s[key] if s and s["status"] == "ok" else None

    def statuses(n: int) -> dict[str, str]:
        return {side: status_text(samples.get((side, n))) for side in SIDES}

    rows = []
    for n in sizes:
        for key, metric, unit in (("wall_s", "wall time", "s"), ("items_per_s", "items/s", "items/s"),
                                  ("peak_rss_mb", "peak RSS", "MB"), ("journal_mb", "journal + WAL at the end", "MB")):
            limit = (TARGET_10K_S if (key, n) == ("wall_s", 10_000) else
                     TARGET_100K_RSS_MB if (key, n) == ("peak_rss_mb", 100_000) else None)
            rows.append(FanRow(f"{key}_{n}", f"{n:,} items: {metric}", unit, value("roost", n, key),
                               native=value("native", n, key), per_item=value("native-per-item", n, key),
                               limit=limit, status=statuses(n), higher_is_better=unit == "items/s"))
    for a, b in zip(sizes, sizes[1:], strict=False):
        def scaling(side: str, a: int = a, b: int = b) -> float | None:
            ta, tb = value(side, a, "wall_s"), value(side, b, "wall_s")
            return tb / ta if ta and tb else None

        st = {side: "ok" if scaling(side) is not None else
              next((s for s in (statuses(b)[side], statuses(a)[side]) if s != "ok"), "-") for side in SIDES}
        rows.append(FanRow(f"scaling_{a}_{b}", f"time({b:,}) / time({a:,})", "×", scaling("roost"),
                           native=scaling("native"), per_item=scaling("native-per-item"),
                           limit=TARGET_SCALING if (a, b) in SCALING_PAIRS else None, status=st))
    return rows


def table(rows: list[FanRow]) -> str:
    out = ["| measurement | roost (local, process) | native, group commit | native, commit per item | "
           "roost ÷ native | target | result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}×"
        out.append(f"| {r.metric} | {r.cell('roost', r.measured)} | {r.cell('native', r.native)} | "
                   f"{r.cell('native-per-item', r.per_item)} | {ratio} | {r.target_text()} | {r.verdict} |")
    return "\n".join(out)


NOTES = f"""\
- roost: `App([split, worker, join], durability="process")`, `worker.reacts_to(split, each=True)`, `join`'s
  input `list[Done]` (a gather); time = `await app.arun(Job(n=n))` after the runtime was opened, up to the
  typed result (the run record read back, every activation included). roost runs the sync functions
  in its own thread pool (at most 256 activations executing at once).
- native: asyncio + sqlite3 (WAL, synchronous=NORMAL, SQLite's own auto-checkpoint); the run row and
  split's output committed, one task per item calling `work` directly on the loop, each item's result
  row committed before the item counts as done, then the join reads the rows back in order and the
  run row is completed. Group commit: a writer task commits what is queued, at most
  {GROUP_COMMIT_ROWS:,} rows per transaction; commit per item: one transaction per row.
- Each figure comes from its own child process (fresh journal in a temporary directory); peak RSS is
  that process's `ru_maxrss`, interpreter and imports included; journal + WAL = the database file and
  its `-wal` just after the run finished (before close)."""


# --------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    p = arg_parser(__doc__, SIDES)
    p.add_argument("--sizes", help="comma-separated item counts (default 1000,10000,100000; --quick: 100,1000)")
    p.add_argument("--timeout", type=float,
                   help="seconds each child may take (default: 0.009 s per item, between 120 and 900)")
    add_out(p, RESULTS)
    args = p.parse_args()
    sides = [s for s in SIDES if s in chosen(p, args.only, SIDES)]
    try:
        sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()}) if args.sizes else \
            list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    except ValueError:
        p.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        p.error("--sizes needs at least one count, each at least 1")
    sources, load_start = source_state(), os.getloadavg()  # before the run: what the children import
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-fanout-"))
    samples: dict[tuple[str, int], dict[str, Any]] = {}
    timings: dict[str, float] = {}
    try:
        for n in sizes:
            for side in sides:
                timeout = args.timeout or default_timeout(n)
                if any(samples.get((side, m), {}).get("status") == "timeout" for m in sizes if m < n):
                    samples[side, n] = {"status": "skipped (a smaller size timed out)"}
                    continue
                with timed(f"{side}, {n:,} items", timings):
                    samples[side, n] = run_child(side, n, tmp, timeout)
                if samples[side, n]["status"] != "ok":
                    print(f"  {side}, {n:,} items: {status_text(samples[side, n])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = build_rows(samples, sizes)
    info = {"git_commit": sources, "load_average_at_start": load_start,
            **host_info(sqlite=sqlite3.sqlite_version, load_average_at_end=os.getloadavg()),
            **package_versions("pydantic")}
    print(f"\nroost each=True fan-out + gather — {info['nproc']} CPU ({info['cpu']}), Python {info['python']}, "
          f"SQLite {info['sqlite']}, roost at {sources}{' (quick)' if args.quick else ''}\n")
    print(table(rows))
    print("\n" + NOTES)
    write_json(Path(args.out), {
        "machine": info, "quick": args.quick, "sizes": sizes, "sides": sides, "child_seconds": timings,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "group_commit_rows": GROUP_COMMIT_ROWS,
        "targets": {"10k_wall_s": TARGET_10K_S, "100k_peak_rss_mb": TARGET_100K_RSS_MB,
                    "scaling_time_ratio": TARGET_SCALING, "scaling_pairs": SCALING_PAIRS},
        "rows": [r.as_json() for r in rows],
        "runs": [{"side": side, "items": n, **s} for (side, n), s in samples.items()]})
    errors = [(side, n, s) for (side, n), s in samples.items() if s["status"] == "error"]
    for side, n, s in errors:
        print(f"\nFAILED: {side}, {n:,} items (exit status {s['returncode']}):\n{s['stderr_tail']}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
