"""What the crash pipelines share (pipeline.py, the local suite's; restate_pipeline.py, also run by
temporal_pipeline.py): the models, the steps and the wiring of ::

    plan (orchestration: outline, research, sleep, draft with retry) --+--> fact  --+--> merge --> publish (approval)
                                                                       +--> style --+

the counter lines every step writes outside the engine, and the kill points of the steps. Plan's
orchestration code (its own kill points, the length of its sleep) is each pipeline's.

Every step appends one JSON line to ``COUNTER_DIR/<agent>.<step>.log`` (fsync'ed) when it starts
and one just before it returns ('fail' when an attempt raises): these counters live outside the
engine's journal, so a test sees each real execution, whichever process ran it.

At a kill point a step appends ``pid time`` to ``COUNTER_DIR/at-<point>`` and holds (up to an
hour) until it is killed, or released by the file ``COUNTER_DIR/release``. SCENARIO picks the point:

    step, server-step   inside plan's 'research' step (async; its 'start' line written, nothing journaled)
    retry               plan's 'draft' failed its first attempt; the runtime waits an hour before retrying
    inflight            inside both 'fact' (point inflight-fact) and 'style' (inflight-style)
    fanout, server-sync inside 'fact' (a sync step, in a thread); 'style', the other branch, runs to the end
    converge            inside 'style', while 'fact' runs to the end and merge absorbs its contribution

``ROOST_CRASH_BLOCK=0`` in the environment turns the holding off (and those markers): a restarted
process runs the same scenario without stopping anywhere.

A pipeline script calls :func:`configure` before it builds its app; it imports this module as
``_steps`` (its directory is on sys.path), a test process as ``tests.crash._steps``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roost import Agent, RetryableError, agent, current_step

RUN_INPUT = {"text": "crash safety"}
BLOCK_SECONDS = 3600.0
DRAFT_MAX_ATTEMPTS = 2

# Every step of the pipeline, as named in the counter files.
STEPS = ["plan.outline", "plan.research", "plan.draft", "fact.fact", "style.style", "merge.merge", "publish.publish"]

SCENARIO = "none"
COUNTER_DIR = Path(".")


def configure(counters: str, scenario: str) -> None:
    """This process's counter directory (made if missing) and scenario."""
    global SCENARIO, COUNTER_DIR
    SCENARIO = scenario
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)


class Topic(BaseModel):
    text: str


class Plan(BaseModel):
    topic: str
    outline: list[str]
    research: str
    research_key: str
    draft: str
    draft_key: str


class Facts(BaseModel):
    facts: list[str]
    key: str


class Style(BaseModel):
    tone: str
    words: int
    key: str


class Merged(BaseModel):
    body: str
    facts: int
    tone: str


class Published(BaseModel):
    title: str
    body: str


# -- counters and markers (outside the journal) -----------------------------------------------


def append(path: Path, line: str) -> None:
    """Append ``line`` to ``path``, fsync'ed: it is there even if the process is killed next."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def effect(step: str, event: str) -> None:
    """Record one execution event of ``step`` (start | done | fail) with what the runtime said."""
    info = current_step()
    line = json.dumps({
        "event": event, "pid": os.getpid(), "attempt": info.attempt, "key": info.idempotency_key,
        "run": info.run_id, "step": info.name, "agent": info.agent, "at": time.time(),
    })
    append(COUNTER_DIR / f"{step}.log", line + "\n")


def marker(point: str) -> None:
    append(COUNTER_DIR / f"at-{point}", f"{os.getpid()} {time.time()!r}\n")


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
        if blocks("retry"):
            # Signal once the runtime has taken the failure and sits in its retry wait: this
            # callback runs after the raise below has reached the runtime's backoff await.
            asyncio.get_running_loop().call_soon(marker, "retry")
            raise RetryableError("transient failure", retry_after=BLOCK_SECONDS)
        raise RetryableError("transient failure", retry_after=0.05)
    out = {"text": f"draft of {topic} ({notes})", "key": info.idempotency_key}
    effect("plan.draft", "done")
    return out


def fact_engine(plan: Plan) -> Facts:  # sync single-step agent
    effect("fact.fact", "start")
    if blocks("inflight"):
        hold_sync("inflight-fact")
    if blocks("fanout", "server-sync"):
        hold_sync(SCENARIO)
    out = Facts(facts=[f"fact about {p}" for p in plan.outline], key=current_step().idempotency_key)
    effect("fact.fact", "done")
    return out


async def style_engine(plan: Plan) -> Style:  # async single-step agent
    effect("style.style", "start")
    if blocks("inflight"):
        await hold("inflight-style")
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
    # No idempotency key in this output: merge's (and so publish's) activation id names the
    # contribution that completed the converge, which depends on whether fact or style finished
    # first, so it differs between two runs (it is stable across the recoveries of one run).
    out = Published(title=f"{merged.facts} facts, {merged.tone}", body=merged.body)
    effect("publish.publish", "done")
    return out


def agents(plan_engine: Callable[..., Any]) -> list[Agent]:
    """The pipeline's agents, plan's orchestration being ``plan_engine`` (the caller builds the
    App: App() records the file that calls it as the app's source)."""
    plan = (agent("plan").contracts(input=Topic, output=Plan).engine(plan_engine)
            .retry(max_attempts=DRAFT_MAX_ATTEMPTS, initial_interval=0.05))
    fact = agent("fact").contracts(input=Plan, output=Facts).engine(fact_engine).reacts_to(plan)
    style = agent("style").contracts(input=Plan, output=Style).engine(style_engine).reacts_to(plan)
    merge = agent("merge").contracts(input=(Facts, Style), output=Merged).engine(merge_engine).reacts_to(fact, style)
    publish = (agent("publish").contracts(input=Merged, output=Published).engine(publish_engine)
               .reacts_to(merge).needs_approval())
    return [plan, fact, style, merge, publish]
