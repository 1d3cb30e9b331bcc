"""The app the Restate crash tests kill: a serving process, runnable as a script.

    python tests/crash/restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR SCENARIO

It builds the pipeline below, serves it in-process with ``serve_app`` (hypercorn, HTTP/2) at
``ENDPOINT_URL/v/<code version>``, registers that URI with Restate's admin API, writes the
marker ``COUNTER_DIR/at-serving`` and serves until it is killed. It starts no run: the test
process does (a client-only ``RestateRuntime``), and approves 'publish'.

Wiring (the same as tests/crash/pipeline.py, the local suite's)::

    plan (orchestration: outline, research, sleep, draft with retry) --+--> fact  --+--> merge --> publish (approval)
                                                                       +--> style --+

Every step appends one JSON line to ``COUNTER_DIR/<agent>.<step>.log`` (fsync'ed) when it
starts and one just before it returns ('fail' when an attempt raises): these counters live
outside Restate's journal, so the test sees each real execution, whichever process ran it.

SCENARIO picks where the process signals (appends ``pid time`` to ``COUNTER_DIR/at-<point>``)
and, for the step points, then holds the step (up to an hour) until it is killed, or released
by the file ``COUNTER_DIR/release``:

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
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from roost import App, DurableContext, RetryableError, agent, current_step

# The same models as the local suite's pipeline (imported as tests.crash.*, or run as a script).
if __package__:
    from .pipeline import Facts, Merged, Plan, Published, Style, Topic, _append
else:
    from pipeline import Facts, Merged, Plan, Published, Style, Topic, _append

RUN_INPUT = {"text": "crash safety"}
APP_NAME = "crashrestate"
BLOCK_SECONDS = 3600.0
LONG_SLEEP = 3.0  # plan's ctx.sleep in the 'sleep' scenario
SERVER_SLEEP = 1.0  # ... in the 'server' scenario
SHORT_SLEEP = 0.2  # ... otherwise
DRAFT_MAX_ATTEMPTS = 2

# Every step of the pipeline, as named in the counter files.
STEPS = ["plan.outline", "plan.research", "plan.draft", "fact.fact", "style.style", "merge.merge", "publish.publish"]
SCENARIOS = {"step", "sleep", "fanout", "converge", "server", "server-step", "server-sync", "approval", "none"}

SCENARIO = "none"
COUNTER_DIR = Path(".")


def effect(step: str, event: str) -> None:
    """Record one execution event of ``step`` (start | done | fail) with what the runtime said."""
    info = current_step()
    line = json.dumps({
        "event": event, "pid": os.getpid(), "attempt": info.attempt, "key": info.idempotency_key,
        "run": info.run_id, "step": info.name, "agent": info.agent, "at": time.time(),
    })
    _append(COUNTER_DIR / f"{step}.log", line + "\n")


def marker(point: str) -> None:
    _append(COUNTER_DIR / f"at-{point}", f"{os.getpid()} {time.time()!r}\n")


def released() -> bool:
    return (COUNTER_DIR / "release").exists()


def blocks(*points: str) -> bool:
    return SCENARIO in points and os.environ.get("ROOST_CRASH_BLOCK", "1") != "0" and not released()


async def hold(point: str) -> None:
    """Signal that this step is at ``point``, then wait (in the event loop) to be killed or released."""
    marker(point)
    deadline = time.monotonic() + BLOCK_SECONDS
    while time.monotonic() < deadline:  # polls a file: the releaser is another process
        if released():
            return
        await asyncio.sleep(0.02)


def hold_sync(point: str) -> None:
    """:func:`hold` for a sync step (in its executor thread)."""
    marker(point)
    deadline = time.monotonic() + BLOCK_SECONDS
    while not released() and time.monotonic() < deadline:
        time.sleep(0.02)


# -- steps ------------------------------------------------------------------------------------


def outline(topic: str) -> list[str]:  # sync: runs in the executor thread
    effect("plan.outline", "start")
    parts = [f"{topic}: why", f"{topic}: how", f"{topic}: proof"]
    effect("plan.outline", "done")
    return parts


async def research(topic: str, parts: list[str]) -> dict[str, str]:
    effect("plan.research", "start")
    if blocks("step", "server-step"):
        await hold(SCENARIO)
    out = {"notes": f"{len(parts)} sections on {topic}", "key": current_step().idempotency_key}
    effect("plan.research", "done")
    return out


async def draft(topic: str, notes: str) -> dict[str, str]:
    """Fails its first attempt (a transient error), succeeds on the next."""
    info = current_step()
    effect("plan.draft", "start")
    if info.attempt == 1:
        effect("plan.draft", "fail")
        raise RetryableError("transient failure", retry_after=0.05)
    out = {"text": f"draft of {topic} ({notes})", "key": info.idempotency_key}
    effect("plan.draft", "done")
    return out


async def plan_engine(topic: Topic, ctx: DurableContext) -> Plan:
    parts = await ctx.step("outline", outline, topic.text)
    found = await ctx.step("research", research, topic.text, parts)
    if blocks("sleep", "server"):
        marker(SCENARIO)  # (written again when a live process replays plan: harmless)
    await ctx.sleep({"sleep": LONG_SLEEP, "server": SERVER_SLEEP}.get(SCENARIO, SHORT_SLEEP))
    text = await ctx.step("draft", draft, topic.text, found["notes"])
    return Plan(topic=topic.text, outline=parts, research=found["notes"], research_key=found["key"],
                draft=text["text"], draft_key=text["key"])


def fact_engine(plan: Plan) -> Facts:  # sync single-step agent
    effect("fact.fact", "start")
    if blocks("fanout", "server-sync"):
        hold_sync(SCENARIO)
    out = Facts(facts=[f"fact about {p}" for p in plan.outline], key=current_step().idempotency_key)
    effect("fact.fact", "done")
    return out


async def style_engine(plan: Plan) -> Style:  # async single-step agent
    effect("style.style", "start")
    if blocks("converge"):
        await hold("converge")
    out = Style(tone="plain", words=len(plan.draft.split()), key=current_step().idempotency_key)
    effect("style.style", "done")
    return out


def merge_engine(facts: Facts, style: Style) -> Merged:
    effect("merge.merge", "start")
    out = Merged(body=f"{'; '.join(facts.facts)} [{style.tone}, {style.words} words]", facts=len(facts.facts),
                 tone=style.tone)
    effect("merge.merge", "done")
    return out


def publish_engine(merged: Merged) -> Published:
    effect("publish.publish", "start")
    out = Published(title=f"{merged.facts} facts, {merged.tone}", body=merged.body)
    effect("publish.publish", "done")
    return out


def build_app(runtime: Any = None) -> App:
    """The pipeline; ``runtime``: the client-only RestateRuntime of the test process (None here).

    App() records this file as the app's source, so every process building the app here gets
    the same code version, and so the same deployment URI."""
    plan = (agent("plan").contracts(input=Topic, output=Plan).engine(plan_engine)
            .retry(max_attempts=DRAFT_MAX_ATTEMPTS, initial_interval=0.05))
    fact = agent("fact").contracts(input=Plan, output=Facts).engine(fact_engine).reacts_to(plan)
    style = agent("style").contracts(input=Plan, output=Style).engine(style_engine).reacts_to(plan)
    merge = agent("merge").contracts(input=(Facts, Style), output=Merged).engine(merge_engine).reacts_to(fact, style)
    publish = (agent("publish").contracts(input=Merged, output=Published).engine(publish_engine)
               .reacts_to(merge).needs_approval())
    return App([plan, fact, style, merge, publish], name=APP_NAME, runtime=runtime)


async def serve(endpoint: str, admin: str) -> None:
    from roost.runtime.restate._endpoint import serve_app

    app = build_app()
    _, uri = await serve_app(app.compiled, endpoint=endpoint, admin=admin, app_ref=app.app_ref)
    _append(COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r} {uri}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[4] not in SCENARIOS:
        sys.exit(f"usage: restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR {{{'|'.join(sorted(SCENARIOS))}}}")
    from _spans import export_from_env  # the script's directory is on sys.path

    export_from_env()
    endpoint_url, admin_url, counters, SCENARIO = sys.argv[1:]
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(endpoint_url, admin_url))
