"""The app the crash tests kill: runnable as a script.

    python tests/crash/pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO

The pipeline of tests/crash/_steps.py (its models, steps, counters outside the journal and kill
points; see there) with plan's orchestration below, on the embedded runtime's journal JOURNAL.

SCENARIO picks where the process signals readiness (writes ``COUNTER_DIR/at-<point>``) and then
blocks for an hour, waiting to be killed:

    step      inside plan's 'research' step (its 'start' line written, nothing journaled)
    between   in plan's orchestration code, after 'outline' is journaled, before 'research'
    sleep     during plan's ctx.sleep (2 s in this scenario; the test waits for the journal row)
    retry     plan's 'draft' failed its first attempt; the runtime waits an hour before retrying
    inflight  inside both 'fact' and 'style': plan's completion (their messages) is committed
    converge  inside 'style', while 'fact' is done and its contribution absorbed by 'merge'
    approval  nothing blocks, but nobody approves: 'publish' waits (marker once it does)
    none      no block: a restarted process uses this

ROOST_CRASH_APPROVE: ``auto`` (default) makes this process approve 'publish' when the run waits
for it; ``external`` leaves that to someone else (the test resolves it through the journal).

CRASH_SPANS_FILE: every span this process ends, as one JSON line (tests/crash/_spans.py).

On completion the last stdout line is JSON: {"status", "outputs", "agent_status", "pid"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pydantic_core

from roost import App, DurableContext
from roost.errors import PromiseError

# The models, steps and counters shared with restate_pipeline.py (as tests.crash.*, or as a script).
if __package__:
    from . import _steps as steps
else:
    import _steps as steps

APP_NAME = "crashpipe"
STEPS = steps.STEPS  # every step of the pipeline, as named in the counter files
DRAFT_MAX_ATTEMPTS = steps.DRAFT_MAX_ATTEMPTS


async def plan_engine(topic: steps.Topic, ctx: DurableContext) -> steps.Plan:
    parts = await ctx.step("outline", steps.outline, topic.text)
    if steps.blocks("between"):
        await steps.hold("between")
    found = await ctx.step("research", steps.research, topic.text, parts)
    if steps.blocks("sleep"):
        steps.marker("sleep")
    await ctx.sleep(2.0 if steps.blocks("sleep") else 0.2)
    text = await ctx.step("draft", steps.draft, topic.text, found["notes"])
    return steps.Plan(topic=topic.text, outline=parts, research=found["notes"], research_key=found["key"],
                      draft=text["text"], draft_key=text["key"])


def build_app(journal: str | os.PathLike[str]) -> App:
    return App(steps.agents(plan_engine), name=APP_NAME, journal=journal)


async def main(journal: str, run_id: str) -> dict[str, object]:
    approve = os.environ.get("ROOST_CRASH_APPROVE", "auto")
    app = build_app(journal)
    async with app:
        handle = await app.start(steps.RUN_INPUT, run_id)
        name = await handle.approval(timeout=None)
        if name is not None:
            if approve == "auto":
                try:
                    await app.aresolve(run_id, name, True)
                except PromiseError:
                    pass  # resolved already (before a crash, or by the test)
            elif steps.blocks("approval"):
                steps.marker("approval")
        result = await handle.result()
        return {
            "status": result.status,
            "outputs": pydantic_core.to_jsonable_python(result.outputs),
            "agent_status": result.agent_status,
            "pid": os.getpid(),
        }


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO")
    from _spans import export_from_env  # the script's directory is on sys.path

    export_from_env()
    journal_path, run, counters, scenario = sys.argv[1:]
    steps.configure(counters, scenario)
    print(json.dumps(asyncio.run(main(journal_path, run)), sort_keys=True), flush=True)
