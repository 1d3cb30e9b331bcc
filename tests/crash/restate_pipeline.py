"""The app the Restate crash tests kill: a serving process, runnable as a script.

    python tests/crash/restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR SCENARIO

It builds the pipeline below, serves it in-process with ``serve_app`` (hypercorn, HTTP/2) at
``ENDPOINT_URL/v/<code version>``, registers that URI with Restate's admin API, writes the
marker ``COUNTER_DIR/at-serving`` and serves until it is killed. It starts no run: the test
process does (a client-only ``RestateRuntime``), and approves 'publish'.

The pipeline of tests/crash/_steps.py (the same agents, steps and counters as the local suite's
tests/crash/pipeline.py; see there) with plan's orchestration below. SCENARIO picks where the
process signals (appends ``pid time`` to ``COUNTER_DIR/at-<point>``) and, for the step points,
then holds the step (up to an hour) until it is killed, or released by the file ``COUNTER_DIR/release``:

    step         inside plan's 'research' step (async; its 'start' line written, nothing journaled)
    sleep        plan is about to enter its ctx.sleep (3 s in this scenario, 0.2 s otherwise)
    fanout       inside 'fact' (a sync step, in a thread); 'style', the other branch, runs to the end
    converge     inside 'style'; 'fact' runs to the end and merge absorbs its contribution
    approval     nothing holds; 'publish' waits for the test's approval
    server       like 'sleep', with a 1 s sleep: the test kills restate-server during it
    server-step  like 'step', for killing restate-server (the step is released by the file)
    server-sync  like 'fanout', for killing restate-server (the step is released by the file)
    none         nothing holds

``ROOST_CRASH_BLOCK=0`` in the environment turns the holding off (and the markers of the step
points): a restarted process runs the same scenario without stopping anywhere, so the handlers
execute exactly the same Restate operations as before the kill (the sleep's length depends on
the scenario only, never on that switch).

``CRASH_SPANS_FILE`` in the environment: the process writes every span it ends to that file,
one JSON line each (tests/crash/_spans.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from roost import App, DurableContext

# The models, steps and counters shared with the local suite's pipeline (as tests.crash.*, or as a script).
if __package__:
    from . import _steps as steps
else:
    import _steps as steps

APP_NAME = "crashrestate"
RUN_INPUT = steps.RUN_INPUT
STEPS = steps.STEPS  # every step of the pipeline, as named in the counter files
LONG_SLEEP = 3.0  # plan's ctx.sleep in the 'sleep' scenario
SERVER_SLEEP = 1.0  # ... in the 'server' scenario
SHORT_SLEEP = 0.2  # ... otherwise
SCENARIOS = {"step", "sleep", "fanout", "converge", "server", "server-step", "server-sync", "approval", "none"}


async def plan_engine(topic: steps.Topic, ctx: DurableContext) -> steps.Plan:
    parts = await ctx.step("outline", steps.outline, topic.text)
    found = await ctx.step("research", steps.research, topic.text, parts)
    if steps.blocks("sleep", "server"):
        steps.marker(steps.SCENARIO)  # (written again when a live process replays plan: harmless)
    await ctx.sleep({"sleep": LONG_SLEEP, "server": SERVER_SLEEP}.get(steps.SCENARIO, SHORT_SLEEP))
    text = await ctx.step("draft", steps.draft, topic.text, found["notes"])
    return steps.Plan(topic=topic.text, outline=parts, research=found["notes"], research_key=found["key"],
                      draft=text["text"], draft_key=text["key"])


def build_app(runtime: Any = None) -> App:
    """The pipeline; ``runtime``: the client-only RestateRuntime of the test process (None here).

    App() records this file as the app's source, so every process building the app here gets
    the same code version, and so the same deployment URI."""
    return App(steps.agents(plan_engine), name=APP_NAME, runtime=runtime)


async def serve(endpoint: str, admin: str) -> None:
    from roost.runtime.restate._endpoint import serve_app

    app = build_app()
    _, uri = await serve_app(app.compiled, endpoint=endpoint, admin=admin, app_ref=app.app_ref)
    steps.append(steps.COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r} {uri}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[4] not in SCENARIOS:
        sys.exit(f"usage: restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR {{{'|'.join(sorted(SCENARIOS))}}}")
    from _spans import export_from_env  # the script's directory is on sys.path

    export_from_env()
    endpoint_url, admin_url, counters, scenario = sys.argv[1:]
    steps.configure(counters, scenario)
    asyncio.run(serve(endpoint_url, admin_url))
