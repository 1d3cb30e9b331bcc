"""What the parallel-branch crash pipelines share (branches_pipeline.py, the embedded runtime's;
branches_restate_pipeline.py; branches_temporal_pipeline.py): the agent ``fork``, whose
orchestration code runs two branches concurrently.

``fork`` runs ``asyncio.gather(chain("A", ...), chain("B", ...))``; each chain is three
``ctx.step("work", ...)`` calls with its own delays (PROFILE, one of ``DELAYS``: ``mixed`` by
default), so the two branches' steps finish in an interleaved order that depends on the profile.
Every step appends a fsync'ed JSON line to ``COUNTER_DIR/<tag><i>.log`` when it starts and when
it is done (outside the engine's journal).

SCENARIO ``last``: each branch's last step writes ``at-last-<tag>`` and holds (in its worker
thread, up to an hour) until the process is killed or ``COUNTER_DIR/release`` exists; a process
spawned with ``ROOST_CRASH_BLOCK=0`` does not hold. ``none``: no hold.

A pipeline script calls :func:`configure` before it builds its app; it imports this module as
``_branches`` (its directory is on sys.path), a test process as ``tests.crash._branches``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roost import Agent, DurableContext, agent, current_step

if __package__:
    from ._steps import append
else:
    from _steps import append

RUN_INPUT = {"label": "x"}
SCENARIOS = {"last", "none"}
DELAYS = {  # seconds each step of each branch takes, per profile
    "mixed": {"A": (0.02, 0.001, 0.03), "B": (0.001, 0.025, 0.002)},  # the embedded runtime's test uses this one
    "b-ahead": {"A": (0.04, 0.0, 0.0), "B": (0.0, 0.0, 0.0)},  # B reaches its last step before A's first is done
    "lockstep": {"A": (0.01, 0.01, 0.01), "B": (0.01, 0.01, 0.01)},  # both finish each step in the same round
}
BLOCK_SECONDS = 3600.0

SCENARIO = "none"
PROFILE = "mixed"
COUNTER_DIR = Path(".")


def configure(counters: str, scenario: str, profile: str = PROFILE) -> None:
    """This process's counter directory (made if missing), scenario and delay profile."""
    global SCENARIO, PROFILE, COUNTER_DIR
    SCENARIO, PROFILE = scenario, profile
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)


class Go(BaseModel):
    label: str


class Both(BaseModel):
    a: list[str]
    b: list[str]


def note(name: str, event: str, **extra: str) -> None:
    """One counter line of step ``name`` ('A1'): ``event`` (start | done), what the runtime said, ``extra``."""
    info = current_step()
    line = json.dumps({"event": event, "pid": os.getpid(), "attempt": info.attempt, "key": info.idempotency_key,
                       "run": info.run_id, **extra, "at": time.time()})
    append(COUNTER_DIR / f"{name}.log", line + "\n")


def holds() -> bool:
    return SCENARIO == "last" and os.environ.get("ROOST_CRASH_BLOCK", "1") != "0"


def work(tag: str, i: int, seen: list[str], **extra: str) -> str:  # sync: runs in a worker thread
    """Step ``i`` of branch ``tag``, after the steps ``seen`` of its branch; ``extra`` goes into its counter lines."""
    name = f"{tag}{i}"
    note(name, "start", **extra)
    time.sleep(DELAYS[PROFILE][tag][i])
    if holds() and i == 2:
        append(COUNTER_DIR / f"at-last-{tag}", f"{os.getpid()} {time.time()!r}\n")
        deadline = time.monotonic() + BLOCK_SECONDS
        while not (COUNTER_DIR / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    note(name, "done", **extra)
    return f"{name}<{'+'.join(seen)}>"


async def chain(tag: str, ctx: DurableContext) -> list[str]:
    out: list[str] = []
    for i in range(3):
        out.append(await ctx.step("work", work, tag, i, [o.split("<")[0] for o in out]))
    return out


async def fork(go: Go, ctx: DurableContext) -> Both:
    a, b = await asyncio.gather(chain("A", ctx), chain("B", ctx))
    return Both(a=a, b=b)


def fork_agent(engine: Callable[[Go, DurableContext], Coroutine[Any, Any, Both]] = fork) -> Agent:
    """The app's one agent (the caller builds the App: App() records the file that calls it as
    the app's source); ``engine``: its orchestration, :func:`fork` unless the caller has its own."""
    return agent("fork").contracts(input=Go, output=Both).engine(engine)
