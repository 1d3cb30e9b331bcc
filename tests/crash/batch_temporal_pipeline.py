"""A fan-out whose steps Temporal runs in batch activities: the worker the batch crash tests kill.

    python tests/crash/batch_temporal_pipeline.py ADDRESS TASK_QUEUE COUNTER_DIR SCENARIO

Wiring: ``split`` turns ``Job(n=N)`` into N items; ``work`` reacts to each (``each=True``), so
its N activations request the step ``work.work`` in the same workflow turn and the runtime runs
them in batch activities of up to 100 (``src/roost/runtime/temporal/_workflow.py``); ``total``
gathers the outputs. The script runs a roost worker for the app on Temporal at ADDRESS, polling
TASK_QUEUE, writes ``COUNTER_DIR/at-serving`` once it polls and serves until it is killed. The
test process starts the run (a client-only runtime built with :func:`build_app`).

Every step appends one fsync'ed JSON line to ``COUNTER_DIR/steps.log`` when it starts and one
just before it returns: a counter outside Temporal's history, whichever process ran the step.

SCENARIO says which items of ``work`` hold (await, polling a file, up to an hour) after their
'start' line until ``COUNTER_DIR/release-<group>`` exists or the process is killed:

    mid    item i with i % 3 == 1 holds until release-b, i % 3 == 2 until release-c (the test
           kills the worker with the latter still inside their steps)
    end    item i with i % 10 == 7 holds until release-b; and once a batch activity's function
           has returned (all its steps finished), the worker appends ``pid size`` to
           ``COUNTER_DIR/at-batch-end`` and holds it there, before the Temporal SDK reports the
           activity completed: the kill lands between the batch's last step and its completion
           (a window of milliseconds otherwise). A retry of a batch reaching this process while
           it holds (the server timed the held attempt out) holds at once, running nothing.
    retry  a retried batch activity (attempt > 1) appends ``pid size`` to
           ``COUNTER_DIR/at-batch-retry`` and holds before running any of its steps (so the
           attempt never heartbeats); items hold as in ``mid``
    none   nothing holds

``ROOST_CRASH_BLOCK=0`` in the environment turns all holding off: the worker started after a
kill runs every step straight through.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roost import App, agent, current_step

APP_NAME = "crashbatchtemporal"
SCENARIOS = {"mid", "end", "retry", "none"}
BLOCK_SECONDS = 3600.0
POLL = 0.02  # seconds between looks at a release file

SCENARIO = "none"
COUNTER_DIR = Path(".")


class Job(BaseModel):
    n: int


class Item(BaseModel):
    i: int


class Out(BaseModel):
    i: int
    square: int
    key: str


class Summary(BaseModel):
    squares: list[int]


def expected_out(i: int) -> tuple[int, int]:
    return i, i * i


def group(i: int, scenario: str) -> str | None:
    """The release file item ``i`` waits for in ``scenario`` (None: it does not hold)."""
    if scenario in ("mid", "retry"):
        return {0: None, 1: "b", 2: "c"}[i % 3]
    if scenario == "end":
        return "b" if i % 10 == 7 else None
    return None


def blocking() -> bool:
    return os.environ.get("ROOST_CRASH_BLOCK", "1") != "0"


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of one short line: appends never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def note(event: str, i: int) -> None:
    info = current_step()
    line = json.dumps({"event": event, "i": i, "agent": info.agent, "pid": os.getpid(), "attempt": info.attempt,
                       "key": info.idempotency_key, "run": info.run_id, "at": time.time()})
    _append(COUNTER_DIR / "steps.log", line + "\n")


def released(gate: str) -> bool:
    return (COUNTER_DIR / f"release-{gate}").exists()


async def hold_until_released(gate: str) -> None:
    deadline = time.monotonic() + BLOCK_SECONDS
    while time.monotonic() < deadline:  # polls a file: the releaser is another process
        if released(gate):
            return
        await asyncio.sleep(POLL)


def split(job: Job) -> list[Item]:
    note("start", -1)
    items = [Item(i=i) for i in range(job.n)]
    note("done", -1)
    return items


async def work(item: Item) -> Out:  # async: a hundred held steps need no threads
    note("start", item.i)
    gate = group(item.i, SCENARIO)
    if gate is not None and blocking():
        await hold_until_released(gate)
    i, square = expected_out(item.i)
    out = Out(i=i, square=square, key=current_step().idempotency_key)
    note("done", item.i)
    return out


def total(outs: list[Out]) -> Summary:
    note("start", -2)
    summary = Summary(squares=[o.square for o in outs])
    note("done", -2)
    return summary


def build_app(runtime: Any = None) -> App:
    s = agent("split").contracts(input=Job, output=list[Item]).engine(split)
    w = agent("work").contracts(input=Item, output=Out).engine(work).reacts_to(s, each=True)
    t = agent("total").contracts(input=list[Out], output=Summary).engine(total).reacts_to(w)
    return App([s, w, t], name=APP_NAME, runtime=runtime)


def hold_batches(*, at_start: bool) -> None:
    """Scenarios ``end`` and ``retry``: hold batch activities where the module doc says."""
    from temporalio import activity

    from roost.runtime.temporal import _activities

    run_batch = _activities.run_batch

    async def held(req: dict[str, Any]) -> dict[str, Any]:
        retried = activity.info().attempt > 1
        if retried and at_start:
            _append(COUNTER_DIR / "at-batch-retry", f"{os.getpid()} {len(req['batch'])}\n")
        if retried:  # at_start, or a retry of a batch held here at its end: this process is about to die
            await asyncio.Event().wait()
        out = await run_batch(req)
        if not at_start:
            _append(COUNTER_DIR / "at-batch-end", f"{os.getpid()} {len(req['batch'])}\n")
            await asyncio.Event().wait()  # until killed
        return out

    _activities.run_batch = held  # run_step looks it up when a batch comes in


async def serve(address: str, task_queue: str) -> None:
    from roost.runtime.temporal import TemporalRuntime

    app = build_app(TemporalRuntime(address=address, task_queue=task_queue, serve=True))
    await app.runtime()  # connects and starts the worker
    _append(COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[4] not in SCENARIOS:
        sys.exit(f"usage: batch_temporal_pipeline.py ADDRESS TASK_QUEUE COUNTER_DIR {{{'|'.join(sorted(SCENARIOS))}}}")
    address_, queue_, counters_, SCENARIO = sys.argv[1:]
    COUNTER_DIR = Path(counters_)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    if SCENARIO in ("end", "retry") and blocking():
        hold_batches(at_start=SCENARIO == "retry")
    asyncio.run(serve(address_, queue_))
