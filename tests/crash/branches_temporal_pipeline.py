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

The app's one agent is ``fork`` of tests/crash/_branches.py (two branches of three steps each,
with the delays of PROFILE, one of ``DELAYS``, ``mixed`` by default; their counters outside
Temporal's history; SCENARIO ``last`` or ``none``: see there), with its orchestration and its
step function below: each step is an activity of type ``fork.work``, and its counter lines say
the module that ran it (``module``).

With ``ROOST_CRASH_STEP_STYLE=closure`` in the environment, each step calls ``work`` through a
lambda instead: a function only this process holds, which roost runs as a real activity on this
process's own task queue (and schedules again on the new process's queue after a kill).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import _branches as branches  # the script's directory is on sys.path
from _steps import append

from roost import App, DurableContext
from roost.runtime.temporal import TemporalRuntime

APP_NAME = "crashbranchestemporal"
DELAYS = branches.DELAYS
RUN_TIMEOUT = 120.0  # seconds App.run waits for the run (the test's own bounds are shorter)


def work(tag: str, i: int, seen: list[str]) -> str:  # sync: runs in a worker thread of the activity
    """The step, defined in this script: its counter lines name this module (``__main__``)."""
    return branches.work(tag, i, seen, module=__name__)


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


async def fork(go: branches.Go, ctx: DurableContext) -> branches.Both:
    a, b = await asyncio.gather(chain("A", ctx), chain("B", ctx))
    return branches.Both(a=a, b=b)


def main(address: str, task_queue: str, run_id: str) -> None:
    runtime = TemporalRuntime(address=address, task_queue=task_queue)  # serves the app (the default)
    app = App([branches.fork_agent(fork)], name=APP_NAME, runtime=runtime)
    append(branches.COUNTER_DIR / "at-started", f"{os.getpid()} {time.time()!r}\n")
    result = app.run(branches.Go(label="x"), run_id=run_id, timeout=RUN_TIMEOUT)
    print(json.dumps({"status": result.status, "outputs": {"fork": result["fork"].model_dump()}}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7) or sys.argv[5] not in branches.SCENARIOS or sys.argv[6:] and sys.argv[6] not in DELAYS:
        sys.exit(f"usage: branches_temporal_pipeline.py ADDRESS TASK_QUEUE RUN_ID COUNTER_DIR "
                 f"{{{'|'.join(sorted(branches.SCENARIOS))}}} [{'|'.join(DELAYS)}]")
    address_, queue_, run_id_, counters_, scenario_ = sys.argv[1:6]
    branches.configure(counters_, scenario_, *sys.argv[6:])
    main(address_, queue_, run_id_)
