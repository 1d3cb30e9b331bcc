"""tests/crash/branches_pipeline.py's agent on Temporal, as a user would run it: a script.

    python tests/crash/branches_temporal_pipeline.py ADDRESS TASK_QUEUE RUN_ID COUNTER_DIR SCENARIO [PROFILE]

Run this way, this module is ``__main__`` and the step function ``work`` below lives only here:
a worker finds it again through the app's file (``step_ref`` kind ``script``), so every step is
a real Temporal activity, whose completion the server records at once, not a local activity
(whose result reaches the history only when the workflow task completes, and is lost with it).

The process is both the client and the worker: it builds the app with a ``TemporalRuntime`` on
ADDRESS and TASK_QUEUE (serving the app, the default), writes ``COUNTER_DIR/at-started`` and
runs ``App.run`` with RUN_ID, which starts the run or, when it exists, attaches to it and waits,
while this process's worker serves it. On completion the last stdout line is JSON:
``{"status", "outputs"}``.

``fork`` runs ``asyncio.gather(chain("A", ...), chain("B", ...))``; each chain is three
``ctx.step("work", ...)`` calls (activity type ``fork.work``) with their own delays (PROFILE,
one of ``DELAYS``, ``mixed`` by default), so the branches' steps finish in an interleaved order
that depends on the profile. Every step appends a fsync'ed JSON line to ``COUNTER_DIR/<tag><i>.log``
when it starts and when it is done (outside Temporal's history).

With ``ROOST_CRASH_STEP_STYLE=closure`` in the environment, each step calls ``work`` through a
lambda instead: a function only this process holds, which roost runs as a real activity on this
process's own task queue (and schedules again on the new process's queue after a kill).

SCENARIO ``last``: each branch's last step writes ``at-last-<tag>`` and holds (in its worker
thread, up to an hour) until the process is killed or ``COUNTER_DIR/release`` exists; a process
spawned with ``ROOST_CRASH_BLOCK=0`` does not hold. ``none``: no hold.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from roost import App, DurableContext, agent, current_step
from roost.runtime.temporal import TemporalRuntime

APP_NAME = "crashbranchestemporal"
SCENARIOS = {"last", "none"}
DELAYS = {  # seconds each step of each branch takes, per profile (as tests/crash/branches_restate_pipeline.py)
    "mixed": {"A": (0.02, 0.001, 0.03), "B": (0.001, 0.025, 0.002)},  # as tests/crash/branches_pipeline.py
    "b-ahead": {"A": (0.04, 0.0, 0.0), "B": (0.0, 0.0, 0.0)},  # B reaches its last step before A's first is done
    "lockstep": {"A": (0.01, 0.01, 0.01), "B": (0.01, 0.01, 0.01)},  # both finish each step in the same round
}
BLOCK_SECONDS = 3600.0
RUN_TIMEOUT = 120.0  # seconds App.run waits for the run (the test's own bounds are shorter)

SCENARIO = "none"
PROFILE = "mixed"
COUNTER_DIR = Path(".")


class Go(BaseModel):
    label: str


class Both(BaseModel):
    a: list[str]
    b: list[str]


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def note(name: str, event: str) -> None:
    info = current_step()
    line = json.dumps({"event": event, "pid": os.getpid(), "attempt": info.attempt, "key": info.idempotency_key,
                       "run": info.run_id, "module": __name__, "at": time.time()})
    _append(COUNTER_DIR / f"{name}.log", line + "\n")


def holds() -> bool:
    return SCENARIO == "last" and os.environ.get("ROOST_CRASH_BLOCK", "1") != "0"


def work(tag: str, i: int, seen: list[str]) -> str:  # sync: runs in a worker thread of the activity
    name = f"{tag}{i}"
    note(name, "start")
    time.sleep(DELAYS[PROFILE][tag][i])
    if holds() and i == 2:
        _append(COUNTER_DIR / f"at-last-{tag}", f"{os.getpid()} {time.time()!r}\n")
        deadline = time.monotonic() + BLOCK_SECONDS
        while not (COUNTER_DIR / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    note(name, "done")
    return f"{name}<{'+'.join(seen)}>"


async def chain(tag: str, ctx: DurableContext) -> list[str]:
    out: list[str] = []
    closure = os.environ.get("ROOST_CRASH_STEP_STYLE") == "closure"
    for i in range(3):
        seen = [o.split("<")[0] for o in out]
        if closure:
            out.append(await ctx.step("work", lambda i=i, seen=seen: work(tag, i, seen)))  # type: ignore[misc]
        else:
            out.append(await ctx.step("work", work, tag, i, seen))
    return out


async def fork(go: Go, ctx: DurableContext) -> Both:
    a, b = await asyncio.gather(chain("A", ctx), chain("B", ctx))
    return Both(a=a, b=b)


def main(address: str, task_queue: str, run_id: str) -> None:
    runtime = TemporalRuntime(address=address, task_queue=task_queue)  # serves the app (the default)
    app = App([agent("fork").contracts(input=Go, output=Both).engine(fork)], name=APP_NAME, runtime=runtime)
    _append(COUNTER_DIR / "at-started", f"{os.getpid()} {time.time()!r}\n")
    result = app.run(Go(label="x"), run_id=run_id, timeout=RUN_TIMEOUT)
    print(json.dumps({"status": result.status, "outputs": {"fork": result["fork"].model_dump()}}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7) or sys.argv[5] not in SCENARIOS or sys.argv[6:] and sys.argv[6] not in DELAYS:
        sys.exit(f"usage: branches_temporal_pipeline.py ADDRESS TASK_QUEUE RUN_ID COUNTER_DIR "
                 f"{{{'|'.join(sorted(SCENARIOS))}}} [{'|'.join(DELAYS)}]")
    address_, queue_, run_id_, counters_, SCENARIO = sys.argv[1:6]
    PROFILE = sys.argv[6] if len(sys.argv) == 7 else PROFILE
    COUNTER_DIR = Path(counters_)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    main(address_, queue_, run_id_)
