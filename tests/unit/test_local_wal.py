"""The WAL of a live embedded runtime stays within its limit however many runs it carries out."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

from pydantic import BaseModel

from roost import App, agent
from roost.runtime.local import LocalRuntime
from roost.runtime.local._upkeep import WAL_LIMIT


class N(BaseModel):
    n: int


async def inc(x: N) -> N:
    return N(n=x.n + 1)


LIMIT = 2 * 1024 * 1024
"""A 32nd of the real limit, so that a few seconds of runs would cross it many times over without
the checkpoints (each run of this app writes ~100 KB of WAL: 1,500 runs write ~150 MB)."""


def wal_bytes(path: Path) -> int:
    return os.path.getsize(str(path) + "-wal")


class Peak:
    """The largest size the -wal file had, sampled every millisecond by a thread."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak = str(path) + "-wal", 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.sample()

    def sample(self) -> None:
        try:
            self.peak = max(self.peak, os.path.getsize(self.path))
        except OSError:
            pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


async def test_wal_stays_within_its_limit_over_many_runs(tmp_path: Path) -> None:
    assert WAL_LIMIT == 64 * 1024 * 1024
    path = tmp_path / "j.db"
    runtime = LocalRuntime(path, retention="forever")
    runtime.wal_limit = LIMIT
    a = agent("a").contracts(input=N, output=N).engine(inc)
    b = agent("b").contracts(input=N, output=N).engine(inc).reacts_to(a)
    c = agent("c").contracts(input=N, output=N).engine(inc).reacts_to(b)
    app = App([a, b, c], name="wal", runtime=runtime)
    peak = Peak(path)
    gate = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with gate:
            assert (await app.arun(N(n=i)))["c"] == N(n=i + 3)
        peak.sample()

    try:
        await asyncio.gather(*(one(i) for i in range(1500)))
        written = sum(1 for _ in sqlite3.connect(path).execute("SELECT 1 FROM events"))
        assert written >= 1500 * 4  # every run was journaled (on the order of 100 MB of WAL in all)
        # Nothing in the runtime keeps a read transaction open that would pin the WAL: with the
        # runtime open and idle, another connection can checkpoint all of it and truncate it
        # (once it is not refused because the runtime's own checkpoint runs at that moment).
        other = sqlite3.connect(path, timeout=10)
        for _ in range(100):
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            await asyncio.sleep(0.05)
        other.close()
        assert busy == 0
        assert wal_bytes(path) == 0
    finally:
        top = peak.stop()
        await app.aclose()
    assert 0 < top <= LIMIT, f"the WAL reached {top / 1e6:.1f} MB (limit {LIMIT / 1e6:.1f} MB)"
