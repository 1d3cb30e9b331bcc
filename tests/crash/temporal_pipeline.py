"""The app the Temporal crash tests kill: a worker process, runnable as a script.

    python tests/crash/temporal_pipeline.py ADDRESS TASK_QUEUE COUNTER_DIR SCENARIO

It builds the pipeline of tests/crash/restate_pipeline.py (the same agents, steps, counters,
markers and scenarios; see that module), runs a roost worker for it on Temporal at ADDRESS,
polling TASK_QUEUE, writes the marker ``COUNTER_DIR/at-serving`` once the worker polls, and
serves until it is killed. It starts no run: the test process does (a client-only runtime).
``CRASH_SPANS_FILE``: as in restate_pipeline.py (the spans it ends, as JSON lines).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import _steps as steps  # the script's directory is on sys.path
import restate_pipeline as pipeline

from roost.runtime.temporal import TemporalRuntime


async def serve(address: str, task_queue: str) -> None:
    runtime = TemporalRuntime(address=address, task_queue=task_queue, serve=True)
    app = pipeline.build_app(runtime)
    await app.runtime()  # connects and starts the worker
    steps.append(steps.COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[4] not in pipeline.SCENARIOS:
        sys.exit(f"usage: temporal_pipeline.py ADDRESS TASK_QUEUE COUNTER_DIR {{{'|'.join(sorted(pipeline.SCENARIOS))}}}")
    from _spans import export_from_env

    export_from_env()
    address, queue, counters, scenario = sys.argv[1:]
    steps.configure(counters, scenario)
    asyncio.run(serve(address, queue))
