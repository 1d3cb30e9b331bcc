"""An agent whose orchestration code runs two branches concurrently: runnable as a script.

    python tests/crash/branches_pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO

``fork`` runs ``asyncio.gather(chain("A", ...), chain("B", ...))``; each chain is three
``ctx.step("work", ...)`` calls with its own delays, so the two branches finish their steps
in an interleaved order that differs from run to run. Every step appends a fsync'ed JSON line
to ``COUNTER_DIR/<tag><i>.log`` when it starts and when it is done.

SCENARIO ``last``: each branch's last step writes ``at-last-<tag>`` and blocks for an hour
(the test kills the process once both are there). ``none``: no block.

On completion the last stdout line is JSON: {"status", "outputs"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from roost import App, DurableContext, agent

COUNTER_DIR = Path(".")
SCENARIO = "none"
DELAYS = {"A": (0.02, 0.001, 0.03), "B": (0.001, 0.025, 0.002)}


class Go(BaseModel):
    label: str


class Both(BaseModel):
    a: list[str]
    b: list[str]


def note(name: str, event: str) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), "at": time.time()}) + "\n"
    fd = os.open(COUNTER_DIR / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def work(tag: str, i: int, seen: list[str]) -> str:
    name = f"{tag}{i}"
    note(name, "start")
    time.sleep(DELAYS[tag][i])
    if SCENARIO == "last" and i == 2:
        (COUNTER_DIR / f"at-last-{tag}").touch()
        time.sleep(3600)
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


def main() -> None:
    global COUNTER_DIR, SCENARIO
    journal, run_id, counters, SCENARIO = sys.argv[1:5]
    COUNTER_DIR = Path(counters)
    app = App([agent("fork").contracts(input=Go, output=Both).engine(fork)], name="branches", journal=journal)
    result = app.run(Go(label="x"), run_id=run_id, timeout=60)
    print(json.dumps({"status": result.status, "outputs": {"fork": result["fork"].model_dump()}}))


if __name__ == "__main__":
    main()
