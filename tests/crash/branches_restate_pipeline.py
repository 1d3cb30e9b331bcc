"""tests/crash/branches_pipeline.py's agent on Restate: a serving process, runnable as a script.

    python tests/crash/branches_restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR SCENARIO [PROFILE]

It builds the app below, serves it in-process with ``serve_app`` (hypercorn, HTTP/2) at
``ENDPOINT_URL/v/<code version>``, registers that URI with Restate's admin API, writes the
marker ``COUNTER_DIR/at-serving`` and serves until it is killed. It starts no run: the test
process does (a client-only ``RestateRuntime``).

``fork`` runs ``asyncio.gather(chain("A", ...), chain("B", ...))`` inside the run's one
Workflow invocation; each chain is three ``ctx.step("work", ...)`` calls with its own delays
(PROFILE, one of ``DELAYS``: ``mixed``, the local test's, by default), so the two branches'
steps are issued and finish in an interleaved order that depends on the profile. Each
step is one ``ctx.run`` in the workflow's journal, named ``work@fork:entry/<branch>:<n>``
(branch ``0`` is A, ``1`` is B). Every step appends a fsync'ed JSON line to
``COUNTER_DIR/<tag><i>.log`` when it starts and when it is done (outside Restate's journal).

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
from typing import Any

from pydantic import BaseModel

from roost import App, DurableContext, agent, current_step

APP_NAME = "crashbranches"
RUN_INPUT = {"label": "x"}
SCENARIOS = {"last", "none"}
DELAYS = {  # seconds each step of each branch takes, per profile
    "mixed": {"A": (0.02, 0.001, 0.03), "B": (0.001, 0.025, 0.002)},  # as tests/crash/branches_pipeline.py
    "b-ahead": {"A": (0.04, 0.0, 0.0), "B": (0.0, 0.0, 0.0)},  # B reaches its last step before A's first is done
    "lockstep": {"A": (0.01, 0.01, 0.01), "B": (0.01, 0.01, 0.01)},  # both finish each step in the same round
}
BLOCK_SECONDS = 3600.0

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
                       "run": info.run_id, "at": time.time()})
    _append(COUNTER_DIR / f"{name}.log", line + "\n")


def holds() -> bool:
    return SCENARIO == "last" and os.environ.get("ROOST_CRASH_BLOCK", "1") != "0"


def work(tag: str, i: int, seen: list[str]) -> str:  # sync: runs in a worker thread
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
    for i in range(3):
        out.append(await ctx.step("work", work, tag, i, [o.split("<")[0] for o in out]))
    return out


async def fork(go: Go, ctx: DurableContext) -> Both:
    a, b = await asyncio.gather(chain("A", ctx), chain("B", ctx))
    return Both(a=a, b=b)


def build_app(runtime: Any = None) -> App:
    """The app; ``runtime``: the client-only RestateRuntime of the test process (None here).
    App() records this file as the app's source: every process building it here serves the same
    code version, at the same deployment URI."""
    return App([agent("fork").contracts(input=Go, output=Both).engine(fork)], name=APP_NAME, runtime=runtime)


async def serve(endpoint: str, admin: str) -> None:
    from roost.runtime.restate._endpoint import serve_app

    app = build_app()
    _, uri = await serve_app(app.compiled, endpoint=endpoint, admin=admin, app_ref=app.app_ref)
    _append(COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r} {uri}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[4] not in SCENARIOS or sys.argv[5:] and sys.argv[5] not in DELAYS:
        sys.exit(f"usage: branches_restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR "
                 f"{{{'|'.join(sorted(SCENARIOS))}}} [{'|'.join(DELAYS)}]")
    endpoint_url, admin_url, counters, SCENARIO = sys.argv[1:5]
    PROFILE = sys.argv[5] if len(sys.argv) == 6 else PROFILE
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(endpoint_url, admin_url))
