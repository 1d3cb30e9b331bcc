"""A sync step still running when its runtime closes (``_detached.py``): its run stays the closed
runtime's owner's until the step is journaled, and then goes back; a result that comes back after
another process took the run over is not written over that process's history."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from pydantic import BaseModel

from roost import App, DurableContext, agent
from roost.runtime.local import LocalRuntime
from roost.runtime.local._lease import alive, lock_dir


class N(BaseModel):
    n: int


def _app(path: Path, release: threading.Event, started: threading.Event) -> App:
    def charge(n: int) -> int:
        started.set()
        assert release.wait(30), "the test never released the step"
        return n + 1

    async def pay(x: N, ctx: DurableContext) -> N:
        return N(n=await ctx.step("charge", charge, x.n))

    return App([agent("pay").contracts(input=N, output=N).engine(pay)], journal=path)


def _row(path: Path, sql: str, *args: object) -> tuple[object, ...] | None:
    db = sqlite3.connect(path)
    try:
        found: tuple[object, ...] | None = db.execute(sql, args).fetchone()
        return found
    finally:
        db.close()


async def _closed_mid_step(path: Path, release: threading.Event) -> LocalRuntime:
    started = threading.Event()
    app = _app(path, release, started)
    runtime = await app.runtime()
    assert isinstance(runtime, LocalRuntime)
    await app.start(N(n=1), run_id="r")
    assert await asyncio.to_thread(started.wait, 30)
    await app.aclose()
    return runtime


async def test_a_closed_runtime_keeps_the_run_of_a_running_sync_step_until_it_is_journaled(tmp_path: Path) -> None:
    path, release = tmp_path / "j.db", threading.Event()
    runtime = await _closed_mid_step(path, release)
    owner = _row(path, "SELECT owner FROM runs WHERE run_id='r'")
    assert owner is not None and owner[0] is not None, "the run was given back while its step still ran"
    db = sqlite3.connect(path)
    try:
        assert alive(db, str(path), str(owner[0]))  # others follow the run instead of taking it over
    finally:
        db.close()
    assert runtime.detached_steps.running() == ["step 'charge' of agent 'pay'"]
    release.set()
    assert await asyncio.to_thread(runtime.detached_steps.wait, 30)
    assert runtime.detached_steps.recorded == ["step 'charge' of agent 'pay'"]
    assert _row(path, "SELECT status, value FROM journal WHERE run_id='r' AND name='charge'") == ("done", "2")
    assert _row(path, "SELECT owner FROM runs WHERE run_id='r'") == (None,)  # given back
    assert _row(path, "SELECT count(*) FROM owners") == (0,)
    assert not any(lock_dir(str(path)).iterdir())  # its lock file is gone
    resumed = _app(path, threading.Event(), threading.Event())  # its step would block: it must not run
    assert (await resumed.aresume("r", timeout=30))["pay"] == N(n=2)
    await resumed.aclose()


async def test_a_step_that_returns_after_another_process_took_its_run_over_is_not_written(tmp_path: Path) -> None:
    path, release = tmp_path / "j.db", threading.Event()
    runtime = await _closed_mid_step(path, release)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("UPDATE runs SET owner='another-process' WHERE run_id='r'")
    finally:
        db.close()
    release.set()
    assert await asyncio.to_thread(runtime.detached_steps.wait, 30)
    assert runtime.detached_steps.refused == ["step 'charge' of agent 'pay'"]
    assert _row(path, "SELECT status FROM journal WHERE run_id='r' AND name='charge'") is None
    assert _row(path, "SELECT owner FROM runs WHERE run_id='r'") == ("another-process",)
