"""Never a silent stop: faults injected at each point of a run's life on the embedded runtime.

Each fault is injected at the k-th occurrence of its point, for every k a clean run reaches: a
journal write (disk full, persistent or transient), the run engine itself (a bug in roost), and
a ``timeout=`` while a sync step blocks. The run must end visibly (completed, or failed with a
typed error naming run and agent), and after the fault is gone, a resume must finish it with no
journaled step run twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from roost import App, DurableContext, agent
from roost._engine import RunEngine
from roost.errors import JournalError, RunFailedError, RunTimeoutError
from roost.runtime.local import LocalRuntime
from roost.runtime.local._journal import Committer, Journal


class N(BaseModel):
    n: int


def build(path: Path, counts: Counter[str]) -> App:
    def bump(tag: str, n: int) -> int:
        counts[tag] += 1
        return n + 1

    async def head(x: N, ctx: DurableContext) -> N:
        one = await ctx.step("one", bump, "one", x.n)
        await ctx.sleep(0)
        await ctx.send("tail", N(n=one))
        two = await ctx.step("two", bump, "two", one)
        return N(n=two)

    h = agent("head").contracts(input=N, output=N).engine(head)
    m = agent("mid").contracts(input=N, output=N).engine(lambda x: N(n=bump("mid", x.n))).reacts_to(h)
    t = agent("tail").contracts(input=N, output=N).engine(lambda x: N(n=bump("tail", x.n)))
    return App([h, m, t], journal=path, entry=[h])


def calls_in_a_clean_run(tmp_path: Path, target: Any, name: str) -> int:
    seen = 0
    original = getattr(target, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        seen += 1
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(target, name, counting)
        build(tmp_path / "clean.db", Counter()).run(N(n=0), run_id="clean", timeout=10)
    return seen


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Committer, "RETRIES", (0.001, 0.002))
    yield


def inject(mp: pytest.MonkeyPatch, target: Any, name: str, at: int, exc: Callable[[], BaseException],
           *, once: bool) -> None:
    original = getattr(target, name)
    seen = 0

    def faulty(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen == at or (not once and seen > at):
            raise exc()
        return original(*args, **kwargs)

    mp.setattr(target, name, faulty)


def journaled(path: Path) -> set[str]:
    """The steps whose results are in the journal (a plain-function agent's step is its name)."""
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM journal WHERE run_id='r' AND kind='step' AND status='done'").fetchall()
    db.close()
    return {r[0] for r in rows}


def run_status(path: Path) -> str | None:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT status FROM runs WHERE run_id='r'").fetchone()
    db.close()
    return None if row is None else str(row[0])


def finish_after_fault(path: Path, counts: Counter[str]) -> None:
    """The fault is gone: a resume (or the recorded result) completes the run, and no step whose
    result was journaled before runs again (one whose result was lost with the write may)."""
    before, done = Counter(counts), journaled(path)
    result = build(path, counts).run(N(n=0), run_id="r", timeout=20)
    assert result.status == "completed"
    assert result["mid"] == N(n=3) and result["tail"] == N(n=2)
    for step in done:
        assert counts[step] == before[step] == 1, f"journaled step {step!r} ran again: {counts}"
    assert set(counts) == {"one", "two", "mid", "tail"} and max(counts.values()) <= 2


@pytest.mark.parametrize("once", [False, True], ids=["disk-stays-full", "disk-full-once"])
def test_journal_write_faults(tmp_path: Path, fast_retries: None, once: bool) -> None:
    total = calls_in_a_clean_run(tmp_path, Journal, "run_ops")
    assert total >= 5
    full = lambda: sqlite3.OperationalError("database or disk is full")  # noqa: E731
    outcomes: list[str] = []
    for at in range(1, total + 1):
        path, counts = tmp_path / f"j{at}.db", Counter[str]()
        with pytest.MonkeyPatch.context() as mp:
            inject(mp, Journal, "run_ops", at, full, once=once and at > 0)
            if once:  # one failed commit is retried: the run never notices
                mp.setattr(Committer, "RETRIES", (0.001,))
            try:
                result = build(path, counts).run(N(n=0), run_id="r", timeout=10)
                outcome = result.status
            except JournalError as exc:  # the run could not even be created
                assert "could not be written" in str(exc) and "disk is full" in str(exc)
                outcome = "not started"
            except RunFailedError as exc:
                assert exc.run_id == "r" and exc.agent in ("head", "mid", "tail"), exc
                assert exc.error_type == "JournalError" and "disk is full" in exc.error_message
                outcome = "failed"
        if once:
            assert outcome == "completed", f"fault at write {at}"
        elif outcome == "completed":
            # Group commit batches the writes of concurrent activations by timing, so the k-th
            # write is not always the same one: a fault that came only after the run's end was
            # durable (the lease given back at close) leaves it completed, and truly so.
            assert run_status(path) == "completed", f"fault at write {at}: reported completed, journal disagrees"
        else:
            assert outcome in ("failed", "not started"), f"fault at write {at}: {outcome}"
        outcomes.append(outcome)
        finish_after_fault(path, counts)
    if not once:  # a disk that stays full mid-run fails it, visibly, at most write positions
        assert outcomes.count("completed") <= max(2, total // 4) and "failed" in outcomes, outcomes


def test_a_bug_in_the_engine_never_strands_a_run(tmp_path: Path) -> None:
    total = calls_in_a_clean_run(tmp_path, RunEngine, "handle")
    for at in range(1, total + 1):
        path, counts = tmp_path / f"e{at}.db", Counter[str]()
        with pytest.MonkeyPatch.context() as mp:
            inject(mp, RunEngine, "handle", at, lambda: RuntimeError("engine bug"), once=True)
            with pytest.raises((RunFailedError, RuntimeError)) as info:
                build(path, counts).run(N(n=0), run_id="r", timeout=10)
        if isinstance(info.value, RunFailedError):
            assert info.value.error_type == "RuntimeError" and "engine bug" in info.value.error_message
            assert info.value.agent in ("head", "mid", "tail")
        else:  # raised by the first event, before anything was stored: the caller sees it, no run exists
            assert at == 1 and not journaled(path)
        finish_after_fault(path, counts)


def test_serialization_failures_outside_steps_fail_the_run_clearly(tmp_path: Path) -> None:
    class Holder(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: Any

    async def orchestrated(x: N, ctx: DurableContext) -> Holder:
        return Holder(thing=threading.Lock())  # fails when the output is checked, outside any step

    for engine in (lambda x: Holder(thing=threading.Lock()), orchestrated):
        out = agent("out").contracts(input=N, output=Holder).engine(engine)
        with pytest.raises(RunFailedError) as info:
            App([out], journal=tmp_path / "s.db").run(N(n=0), timeout=10)
        assert info.value.agent == "out" and "lock" in info.value.error_message

    async def sender(x: N, ctx: DurableContext) -> N:
        await ctx.send("sink", {"n": threading.Lock()})
        return x

    s = agent("sender").contracts(input=N, output=N).engine(sender)
    k = agent("sink").contracts(input=N, output=N).engine(lambda x: x)
    with pytest.raises(RunFailedError) as info:
        App([s, k], journal=tmp_path / "m.db", entry=[s]).run(N(n=0), timeout=10)
    assert info.value.agent == "sender"


def test_timeout_returns_at_once_and_the_step_still_finishes_once(tmp_path: Path) -> None:
    """run(timeout=) returns while a sync step blocks; the step finishes in its thread and is
    journaled, so resuming the run does not run it again."""
    release, ran = threading.Event(), Counter[str]()

    def slow(x: N) -> N:
        ran["slow"] += 1
        assert release.wait(30), "the test never released the step"
        return N(n=x.n + 1)

    def build_slow() -> App:
        return App([agent("slow").contracts(input=N, output=N).engine(slow)], journal=tmp_path / "t.db")

    with pytest.raises(RunTimeoutError, match="did not finish within 0.3 s"):
        build_slow().run(N(n=1), run_id="t", timeout=0.3)
    assert not release.is_set() and ran["slow"] == 1  # returned while the step still blocked
    release.set()
    deadline = time.monotonic() + 20
    journal = Journal(tmp_path / "t.db")
    try:
        while not journal.entries("t", "slow:entry"):
            assert time.monotonic() < deadline, "the step's result was never journaled"
            time.sleep(0.02)
    finally:
        journal.close()
    result = build_slow().run(N(n=1), run_id="t", timeout=10)
    assert result["slow"] == N(n=2)
    assert ran["slow"] == 1, "the step ran again after the timeout"


async def test_closing_mid_step_leaves_the_run_resumable(tmp_path: Path) -> None:
    gate = asyncio.Event()
    runs = Counter[str]()

    async def wait_gate(x: N) -> N:
        runs["w"] += 1
        await gate.wait()
        return x

    app = App([agent("w").contracts(input=N, output=N).engine(wait_gate)], journal=tmp_path / "c.db")
    await app.start(N(n=1), run_id="c")
    await asyncio.sleep(0.05)
    await app.aclose()  # cancelled: not a failure, the run stays unfinished
    async with LocalRuntime(tmp_path / "c.db", resume=False) as rt:
        assert (await rt.get("c")).status == "running"
    gate.set()
    assert (await app.arun(N(n=1), run_id="c", timeout=10))["w"] == N(n=1)
    await app.aclose()


def test_a_run_resumed_while_its_timed_out_step_still_runs_joins_it(tmp_path: Path) -> None:
    """The same run id run again (same process) while the timed-out sync step still blocks: the
    resumed step waits for that attempt instead of starting a second one."""
    release, ran = threading.Event(), Counter[str]()

    def slow(x: N) -> N:
        ran["slow"] += 1
        assert release.wait(30), "the test never released the step"
        return N(n=x.n + 1)

    def build_slow() -> App:
        return App([agent("slow").contracts(input=N, output=N).engine(slow)], journal=tmp_path / "t.db")

    with pytest.raises(RunTimeoutError):
        build_slow().run(N(n=1), run_id="t", timeout=0.3)
    results: list[Any] = []
    again = threading.Thread(target=lambda: results.append(build_slow().run(N(n=1), run_id="t", timeout=30)))
    again.start()
    time.sleep(0.5)  # lets the resumed run reach the step (if it does not yet, the test only gets weaker)
    release.set()
    again.join(30)
    assert not again.is_alive() and results and results[0]["slow"] == N(n=2)
    assert ran["slow"] == 1, "the resumed run started the step a second time"
