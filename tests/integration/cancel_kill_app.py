"""The app of test_cancel_kill.py, run in processes the test kills (kill -9).

``python cancel_kill_app.py MODE JOURNAL COUNTER_DIR``:

* ``start``: start run ``RUN_ID`` and, once it is in flight (waiting on the promise ``go``, its
  async step ``slow`` and its sync step ``blocking`` running), write the marker ``at-ready``;
  then wait for the run's end and print its status as JSON.
* ``self-cancel``: like ``start``, then cancel the run from this process, stopping (marker
  ``at-cancel-recorded``, then blocking for ever) right after the cancel request is durable and
  before anything carries it out: the test kills the process there.
* ``resume``: resume the run (the process that ran it is gone) and print its end as JSON.
* ``cancel``: cancel the run with the app's code registered, as ``roost runs cancel --app`` does
  (a run no process runs is taken over and cancelled here), and print its end as JSON.

The sync step ``blocking`` blocks until the file ``COUNTER_DIR/release`` exists (up to an hour).
Each step appends ``{"event": "start", "pid": ...}`` to ``COUNTER_DIR/<step>.log`` (outside the
journal), so the test sees what ran, in which process, across kills.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roost import App, DurableContext, RunHandle, agent
from roost.runtime.local import LocalRuntime

RUN_ID = "kill-cancel-1"
BOUND = 60.0  # seconds any wait of this script lasts at most


class N(BaseModel):
    n: int


def count(counter_dir: Path, step: str) -> None:
    with open(counter_dir / f"{step}.log", "a") as f:
        f.write(json.dumps({"event": "start", "pid": os.getpid(), "at": time.time()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def counts(counter_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().split("\n")[:-1]) for p in counter_dir.glob("*.log")}


def build(journal: Path | None, counter_dir: Path, runtime: Any = None) -> App:
    """The app, on the embedded runtime (``journal``) or on ``runtime`` (Restate, Temporal)."""
    never = threading.Event()

    def bump(step: str) -> str:
        count(counter_dir, step)
        return step

    async def slow() -> str:
        count(counter_dir, "slow")
        await asyncio.sleep(3600)
        return "never"

    def blocking() -> str:  # a sync step: it cannot be stopped once it runs
        count(counter_dir, "blocking")
        while not (counter_dir / "release").exists():  # up to an hour; the test may release it
            if never.wait(0.05):
                break
        return "released"

    async def waiter(x: N, ctx: DurableContext) -> N:
        await ctx.step("before", bump, "before")
        await ctx.promise("go")
        await ctx.step("after", bump, "after")
        return x

    async def stepper(x: N, ctx: DurableContext) -> N:
        await ctx.step("slow", slow)
        await ctx.step("after-slow", bump, "after-slow")
        return x

    async def blocker(x: N, ctx: DurableContext) -> N:
        await ctx.step("blocking", blocking)
        await ctx.step("after-blocking", bump, "after-blocking")
        return x

    w = agent("w").contracts(input=N, output=N).engine(waiter)
    s = agent("s").contracts(input=N, output=N).engine(stepper)
    b = agent("b").contracts(input=N, output=N).engine(blocker)
    return App([w, s, b], name="cancelkill", journal=journal, entry=[w, s, b], runtime=runtime)


def marker(counter_dir: Path, point: str) -> None:
    (counter_dir / f"at-{point}").write_text(f"{os.getpid()}\n")


async def in_flight(app: App, counter_dir: Path) -> RunHandle:
    handle = await app.start(N(n=0), run_id=RUN_ID)
    assert await handle.approval(timeout=BOUND) == "go"
    deadline = time.monotonic() + BOUND
    while not {"slow", "blocking"} <= set(counts(counter_dir)):
        assert time.monotonic() < deadline, "the steps never started"
        await asyncio.sleep(0.01)
    return handle


def stop_after_the_request(counter_dir: Path) -> None:
    """The fault: this process stops right after its cancel request is durable (the test kills it)."""
    async def stopped(self: Any, live: Any, reason: str | None) -> None:  # carrying the request out
        marker(counter_dir, "cancel-recorded")
        await asyncio.sleep(3600)

    LocalRuntime._cancel_live = stopped  # type: ignore[method-assign]


async def main(mode: str, journal: Path, counter_dir: Path) -> None:
    app = build(journal, counter_dir)
    try:
        if mode == "resume":
            result = await app.aresume(RUN_ID, timeout=BOUND)
        elif mode == "cancel":
            async with LocalRuntime(journal, resume=False) as rt:
                rt.register(app.compiled, app.app_ref)
                await rt.cancel(RUN_ID, "asked again")
                print(json.dumps({"status": (await rt.wait(RUN_ID, BOUND)).status}), flush=True)
            return
        else:
            handle = await in_flight(app, counter_dir)
            marker(counter_dir, "ready")
            if mode == "self-cancel":
                stop_after_the_request(counter_dir)
                await app.acancel(RUN_ID, reason="self")
            result = await handle.result(BOUND)
        print(json.dumps({"status": result.status}), flush=True)
    finally:
        await app.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
