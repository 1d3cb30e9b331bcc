"""The WAL of one live embedded runtime over many runs (issue 12: 602 MB after 10,000 runs).

Run from the repository root with the project's venv:

    .venv/bin/python bench/bench_wal.py                 # 10,000 runs of a->b->c, 100 in flight
    .venv/bin/python bench/bench_wal.py --runs 3000 --in-flight 1

One process, one App, one fresh journal in a temporary directory (deleted at the end). A thread
samples the size of the -wal file every millisecond; the peak is the largest size seen. Prints a
markdown row per figure and writes bench/results/wal.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

from _common import host_info, write_json  # bench/ is on sys.path
from pydantic import BaseModel

from roost import App, agent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "wal.json"
MIB = 1024 * 1024
LIMIT_MIB = 64  # issue 12: the WAL of a live process stays at or below 64 MB


class Msg(BaseModel):
    n: int


async def inc(m: Msg) -> Msg:
    return Msg(n=m.n + 1)


def size(path: str) -> int:
    return os.path.getsize(path)


class Sampler(threading.Thread):
    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.peak = path, 0
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.wait(0.001):
            try:
                self.peak = max(self.peak, os.path.getsize(self.path))
            except OSError:
                pass


async def measure(runs: int, in_flight: int, journal: Path) -> dict[str, float]:
    a = agent("a").contracts(input=Msg, output=Msg).engine(inc)
    b = agent("b").contracts(input=Msg, output=Msg).engine(inc).reacts_to(a)
    c = agent("c").contracts(input=Msg, output=Msg).engine(inc).reacts_to(b)
    app = App([a, b, c], name="wal", journal=journal)
    await app.runtime()
    sampler = Sampler(str(journal) + "-wal")
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await app.arun(Msg(n=i))

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    elapsed = time.perf_counter() - started
    sampler.stopping.set()
    sampler.join()
    wal_end = size(str(journal) + "-wal")
    await app.aclose()
    return {"runs": runs, "in_flight": in_flight, "seconds": elapsed, "runs_per_s": runs / elapsed,
            "wal_peak_mib": sampler.peak / MIB, "wal_end_mib": wal_end / MIB,
            "db_mib": size(str(journal)) / MIB, "limit_mib": LIMIT_MIB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--in-flight", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.runs, args.in_flight, Path(tmp) / "roost.db"))
    verdict = "pass" if result["wal_peak_mib"] <= LIMIT_MIB else "MISS"
    print("| measurement | target | measured | result |")
    print("|---|---|---|---|")
    print(f"| WAL peak over {args.runs:,} runs a→b→c, {args.in_flight} in flight | ≤ {LIMIT_MIB} MiB "
          f"| {result['wal_peak_mib']:.1f} MiB | {verdict} |")
    print(f"| WAL at the end | - | {result['wal_end_mib']:.1f} MiB | info |")
    print(f"| database at the end | - | {result['db_mib']:.1f} MiB | info |")
    print(f"| throughput | - | {result['runs_per_s']:,.0f} runs/s | info |")
    write_json(args.out, {"host": host_info(), "results": result})


if __name__ == "__main__":
    main()
