"""Behaviour specific to the embedded runtime: journal files, versions, replay checks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from roost import App, DurableContext, RetryPolicy, RunFailedError, agent
from roost.errors import ConfigError, JournalError, JournalVersionError, StepFailedError
from roost.runtime.local import Journal, LocalRuntime


class Q(BaseModel):
    q: str


def simple_app(path: Path) -> App:
    return App([agent("a").contracts(input=Q, output=Q).engine(lambda q: q)], journal=path)


async def test_journal_from_another_version_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.close()
    app = simple_app(path)
    with pytest.raises(JournalVersionError, match="schema version 99.*reads version 2.*move the file away"):
        await app.arun(Q(q="x"))


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users(id INTEGER)")
    db.close()
    with pytest.raises(JournalError, match="not a roost journal"):
        await simple_app(path).arun(Q(q="x"))
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="cannot be used as a roost journal"):
        await simple_app(tmp_path / "garbage.db").arun(Q(q="x"))


@pytest.mark.parametrize(("mode", "expected"), [("process", 1), ("machine", 2)])
def test_durability_modes_set_sqlite_sync(tmp_path: Path, mode: str, expected: int) -> None:
    j = Journal(tmp_path / "j.db", mode)  # type: ignore[arg-type]
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == expected
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    j.close()
    with pytest.raises(ConfigError, match="durability must be one of"):
        Journal(tmp_path / "k.db", "sometimes")  # type: ignore[arg-type]


async def test_replay_that_diverges_from_the_journal_fails_with_both_values(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    order = ["fetch"]

    async def orchestrate(q: Q, ctx: DurableContext) -> Q:
        await ctx.step(order[0], lambda: 1)
        await ctx.promise("go")
        return q

    app = App([agent("o").contracts(input=Q, output=Q).engine(orchestrate)], journal=path)
    handle = await app.start(Q(q="x"), run_id="r")
    assert await handle.approval(timeout=5) == "go"
    await app.aclose()  # like a restart: the run stays unfinished in the journal

    order[0] = "renamed"
    async with LocalRuntime(path, resume=False) as rt:  # answer it without resuming anything
        await rt.resolve("r", "go", True)
    app2 = App([agent("o").contracts(input=Q, output=Q).engine(orchestrate)], journal=path)
    with pytest.raises(RunFailedError, match="NonDeterminismError") as info:
        await app2.aresume("r", timeout=5)
    assert "recorded as step 'fetch'" in info.value.error_message
    assert "asks for step 'renamed'" in info.value.error_message
    await app2.aclose()


async def test_closing_releases_runs_and_a_new_runtime_resumes_them(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    calls: list[str] = []

    def record(tag: str) -> str:
        calls.append(tag)
        return tag

    async def orchestrate(q: Q, ctx: DurableContext) -> Q:
        first = await ctx.step("first", record, "first")
        await ctx.promise("go")
        second = await ctx.step("second", record, "second")
        return Q(q=first + second)

    def build() -> App:
        return App([agent("o").contracts(input=Q, output=Q).engine(orchestrate)], journal=path)

    app = build()
    handle = await app.start(Q(q="x"), run_id="r")
    await handle.approval(timeout=5)
    await app.aclose()
    rt = LocalRuntime(path, resume=False)
    async with rt:
        await rt.resolve("r", "go", True)
    app2 = build()
    result = await app2.arun(Q(q="x"), run_id="r", timeout=5)  # same id: resumes, then returns
    assert result["o"] == Q(q="firstsecond")
    assert calls == ["first", "second"], "the journaled step is not run again"
    await app2.aclose()


async def test_a_step_that_failed_for_good_is_not_run_again_on_replay(tmp_path: Path) -> None:
    """The journal keeps a caught step failure (its attempts, type, message and traceback): a
    resumed run gets the same StepFailedError back instead of invoking the step again."""
    path = tmp_path / "j.db"
    calls: list[int] = []
    seen: list[tuple[int, str, str | None]] = []

    def charge() -> str:
        calls.append(1)
        raise ValueError("card declined")

    async def orchestrate(q: Q, ctx: DurableContext) -> Q:
        try:
            await ctx.step("charge", charge, retry=RetryPolicy(max_attempts=2, initial_interval=0.0))
        except StepFailedError as exc:
            seen.append((exc.attempts, f"{type(exc.cause).__name__}: {exc.cause}",
                         getattr(exc.cause, "user_traceback", None)))
        await ctx.promise("go")
        return q

    def build() -> App:
        return App([agent("o").contracts(input=Q, output=Q).engine(orchestrate)], journal=path)

    app = build()
    handle = await app.start(Q(q="x"), run_id="r")
    await handle.approval(timeout=5)
    await app.aclose()
    async with LocalRuntime(path, resume=False) as rt:
        await rt.resolve("r", "go", True)
    app2 = build()
    await app2.arun(Q(q="x"), run_id="r", timeout=5)
    await app2.aclose()
    assert len(calls) == 2, "the failed step is not invoked again"
    assert [s[:2] for s in seen] == [(2, "ValueError: card declined")] * 2
    replayed = seen[1][2]
    assert replayed is not None and "in charge" in replayed and 'raise ValueError("card declined")' in replayed


async def test_waiting_activations_do_not_hold_the_running_limit(tmp_path: Path) -> None:
    """max_running bounds executing activations only: runs waiting on promises, and callers
    waiting on their callees, never starve the queue (with max_running=1 here)."""

    async def wait_go(q: Q, ctx: DurableContext) -> Q:
        return Q(q=q.q + str(await ctx.promise("go")))

    async def caller(q: Q, ctx: DurableContext) -> Q:
        return await ctx.call("callee", Q(q=q.q + ">"))  # type: ignore[no-any-return]

    w = agent("w").contracts(input=Q, output=Q).engine(wait_go)
    c = agent("caller").contracts(input=Q, output=Q).engine(caller)
    e = agent("callee").contracts(input=Q, output=Q).engine(lambda q: Q(q=q.q + "!"))
    rt = LocalRuntime(tmp_path / "j.db", max_running=1)
    waiting = App([w], name="waiting", runtime=rt)
    calling = App([c, e], name="calling", runtime=rt, entry=[c])
    handles = [await waiting.start(Q(q=str(i)), run_id=f"w{i}") for i in range(4)]
    for h in handles:
        assert await h.approval(timeout=5) == "go"
    results = await asyncio.gather(*(calling.arun(Q(q=str(i)), timeout=5) for i in range(3)))
    assert [r["caller"].q for r in results] == ["0>!", "1>!", "2>!"]
    for i, h in enumerate(handles):
        await waiting.aresolve(h.run_id, "go", i)
    assert [(await h.result(timeout=5))["w"].q for h in handles] == ["00", "11", "22", "33"]
    await waiting.aclose()
    await calling.aclose()
