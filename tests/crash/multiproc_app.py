"""Processes of the many-processes-one-journal crash tests: runnable as a script.

    python tests/crash/multiproc_app.py COMMAND JOURNAL COUNTER_DIR [ARGS...]

Commands:

    count N        once COUNTER_DIR/go exists, run N runs of a keyed agent that adds one to the
                   state of entity 'k'; prints {"done": N, "pid": ...}
    pipe RUN_ID    run (or join) run RUN_ID of a two-agent pipeline: 'work' runs the steps 'first',
                   'second' and 'third', then 'finish' runs its step 'last'. With MP_BLOCK=1,
                   'second' writes the marker 'second' and waits for COUNTER_DIR/release. Writes
                   the marker 'submitted' once the run is submitted (started or joined).
                   Prints {"status", "outputs", "pid"}.
    open ROUNDS    JOURNAL is a directory: writes the marker 'ready'; for round k, at the time
                   COUNTER_DIR/go holds (plus k * 0.4 s), opens the fresh journal JOURNAL/j<k>.db
                   and runs one run on it; prints {"failures": [...]} (one message per failed round)
    lock SECONDS   hold the journal's write lock (BEGIN IMMEDIATE) for SECONDS: marker 'locked'
                   once it holds it, 'unlocked' after it committed

A marker POINT is the file COUNTER_DIR/at-POINT-NAME, NAME from MP_NAME (the pids of processes in
PID namespaces of their own do not tell them apart), holding the pid.

Every step appends a JSON line to COUNTER_DIR/<step>.log (fsync'ed) when it starts and when it
is done: counters outside the journal, so a test sees every real execution.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from roost import App, DurableContext, agent, current_step

# Counter lines are written the same way as the other crash pipelines' (fsync'ed appends).
if __package__:
    from ._steps import append as _append
else:
    from _steps import append as _append

COUNTER_DIR = Path(".")
WAIT_LIMIT = 60.0  # seconds any wait of this script gives up after (a test never hangs on it)


class Topic(BaseModel):
    text: str


class Count(BaseModel):
    n: int


class Work(BaseModel):
    parts: list[str]


class Done(BaseModel):
    summary: str


def effect(step: str, event: str) -> None:
    info = current_step()
    line = json.dumps({"event": event, "run": info.run_id, "pid": os.getpid(), "attempt": info.attempt,
                       "at": time.time()})
    _append(COUNTER_DIR / f"{step}.log", line + "\n")


def marker(point: str) -> None:
    """Write COUNTER_DIR/at-POINT-NAME (NAME from MP_NAME: pids do not tell processes in PID namespaces apart)."""
    _append(COUNTER_DIR / f"at-{point}-{os.environ.get('MP_NAME', '')}", f"{os.getpid()}\n")


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {WAIT_LIMIT} s")
        time.sleep(0.02)


# -- count: keyed entity state from several processes -------------------------------------------


async def add_one(t: Topic, ctx: DurableContext) -> Count:
    n = await ctx.state.get("count", 0) + 1
    await asyncio.sleep(0.001)  # let the other process interleave, as real work would
    ctx.state.set("count", n)
    return Count(n=n)


def counter_app(journal: str) -> App:
    memo = agent("memo").contracts(input=Topic, output=Count).engine(add_one).keyed_by(lambda t: "k")
    return App([memo], name="mpcount", journal=journal)


async def count(journal: str, n: int) -> None:
    wait_for_file(COUNTER_DIR / "go")
    async with counter_app(journal) as app:
        for _ in range(n):
            await app.arun(Topic(text="x"))
    print(json.dumps({"done": n, "pid": os.getpid()}))


# -- pipe: one run, several processes -----------------------------------------------------------


def first(text: str) -> str:
    effect("first", "start")
    effect("first", "done")
    return f"{text}:1"


def second(text: str) -> str:
    effect("second", "start")
    if os.environ.get("MP_BLOCK") == "1":
        marker("second")
        wait_for_file(COUNTER_DIR / "release")
    effect("second", "done")
    return f"{text}:2@{os.getpid()}"


def third(text: str) -> str:
    effect("third", "start")
    effect("third", "done")
    return f"{text}:3"


def last(parts: list[str]) -> str:
    effect("last", "start")
    effect("last", "done")
    return " ".join(parts)


async def work(t: Topic, ctx: DurableContext) -> Work:
    a = await ctx.step("first", first, t.text)
    b = await ctx.step("second", second, a)
    c = await ctx.step("third", third, b)
    return Work(parts=[a, b, c])


async def finish(w: Work, ctx: DurableContext) -> Done:
    return Done(summary=await ctx.step("last", last, w.parts))


def pipe_app(journal: str) -> App:
    w = agent("work").contracts(input=Topic, output=Work).engine(work)
    f = agent("finish").contracts(input=Work, output=Done).engine(finish).reacts_to(w)
    return App([w, f], name="mppipe", journal=journal)


async def pipe(journal: str, run_id: str) -> None:
    async with pipe_app(journal) as app:
        handle = await app.start(Topic(text="t"), run_id)
        marker("submitted")
        result = await handle.result(WAIT_LIMIT)
        outputs = {name: out.model_dump() for name, out in result.outputs.items()}
        print(json.dumps({"status": result.status, "outputs": outputs, "pid": os.getpid()}))


# -- open: many processes create one journal ------------------------------------------------------


def one_app(journal: str) -> App:
    echo = agent("echo").contracts(input=Topic, output=Topic).engine(lambda t: t)
    return App([echo], name="mpopen", journal=journal)


async def open_many(directory: str, rounds: int) -> None:
    marker("ready")
    wait_for_file(COUNTER_DIR / "go")
    t0 = float((COUNTER_DIR / "go").read_text())
    failures = []
    for k in range(rounds):
        await asyncio.sleep(max(0.0, t0 + 0.4 * k - time.time()))
        try:
            async with one_app(str(Path(directory) / f"j{k}.db")) as app:
                await app.arun(Topic(text=str(k)))
        except Exception as exc:
            failures.append(f"round {k}: {type(exc).__name__}: {exc}")
    print(json.dumps({"failures": failures, "pid": os.getpid()}))


# -- lock: another process holds the write lock ------------------------------------------------


def hold_lock(journal: str, seconds: float) -> None:
    db = sqlite3.connect(journal, isolation_level=None, timeout=30.0)
    db.execute("BEGIN IMMEDIATE")
    marker("locked")
    time.sleep(seconds)
    db.execute("COMMIT")
    db.close()
    marker("unlocked")


def main() -> None:
    global COUNTER_DIR
    command, journal, COUNTER_DIR = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if command == "count":
        asyncio.run(count(journal, int(sys.argv[4])))
    elif command == "pipe":
        asyncio.run(pipe(journal, sys.argv[4]))
    elif command == "open":
        asyncio.run(open_many(journal, int(sys.argv[4])))
    elif command == "lock":
        hold_lock(journal, float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
