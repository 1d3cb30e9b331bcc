"""The app the crash tests kill: runnable as a script.

    python tests/crash/pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO

Wiring::

    plan (orchestration: outline, research, sleep, draft with retry) --+--> fact  --+--> merge --> publish (approval)
                                                                       +--> style --+

Every step appends one JSON line to ``COUNTER_DIR/<agent>.<step>.log`` (fsync'ed) when it
starts and one just before it returns ('fail' when an attempt raises): these counters live
outside the journal, so the test can see each real execution.

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
import time
from pathlib import Path

import pydantic_core
from pydantic import BaseModel

from roost import App, DurableContext, RetryableError, agent, current_step
from roost.errors import PromiseError

RUN_INPUT = {"text": "crash safety"}
APP_NAME = "crashpipe"
BLOCK_SECONDS = 3600.0
DRAFT_MAX_ATTEMPTS = 2

# Every step of the pipeline, as named in the counter files.
STEPS = ["plan.outline", "plan.research", "plan.draft", "fact.fact", "style.style", "merge.merge", "publish.publish"]

SCENARIO = "none"
COUNTER_DIR = Path(".")


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


def _append(path: Path, line: str) -> None:
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
        "step": info.name, "agent": info.agent, "at": time.time(),
    })
    _append(COUNTER_DIR / f"{step}.log", line + "\n")


def marker(point: str) -> None:
    _append(COUNTER_DIR / f"at-{point}", f"{os.getpid()}\n")


def blocks(*points: str) -> bool:
    return SCENARIO in points


# -- steps ------------------------------------------------------------------------------------


def outline(topic: str) -> list[str]:  # sync: runs in the executor thread
    effect("plan.outline", "start")
    parts = [f"{topic}: why", f"{topic}: how", f"{topic}: proof"]
    effect("plan.outline", "done")
    return parts


async def research(topic: str, parts: list[str]) -> dict[str, str]:
    effect("plan.research", "start")
    if blocks("step"):
        marker("step")
        await asyncio.sleep(BLOCK_SECONDS)
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


async def plan_engine(topic: Topic, ctx: DurableContext) -> Plan:
    parts = await ctx.step("outline", outline, topic.text)
    if blocks("between"):
        marker("between")
        await asyncio.sleep(BLOCK_SECONDS)
    found = await ctx.step("research", research, topic.text, parts)
    if blocks("sleep"):
        marker("sleep")
    await ctx.sleep(2.0 if blocks("sleep") else 0.2)
    text = await ctx.step("draft", draft, topic.text, found["notes"])
    return Plan(topic=topic.text, outline=parts, research=found["notes"], research_key=found["key"],
                draft=text["text"], draft_key=text["key"])


def fact_engine(plan: Plan) -> Facts:  # sync single-step agent
    effect("fact.fact", "start")
    if blocks("inflight"):
        marker("inflight-fact")
        time.sleep(BLOCK_SECONDS)
    out = Facts(facts=[f"fact about {p}" for p in plan.outline], key=current_step().idempotency_key)
    effect("fact.fact", "done")
    return out


async def style_engine(plan: Plan) -> Style:  # async single-step agent
    effect("style.style", "start")
    if blocks("inflight"):
        marker("inflight-style")
        await asyncio.sleep(BLOCK_SECONDS)
    if blocks("converge"):
        marker("converge")
        await asyncio.sleep(BLOCK_SECONDS)
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


def build_app(journal: str | os.PathLike[str]) -> App:
    plan = (agent("plan").contracts(input=Topic, output=Plan).engine(plan_engine)
            .retry(max_attempts=DRAFT_MAX_ATTEMPTS, initial_interval=0.05))
    fact = agent("fact").contracts(input=Plan, output=Facts).engine(fact_engine).reacts_to(plan)
    style = agent("style").contracts(input=Plan, output=Style).engine(style_engine).reacts_to(plan)
    merge = agent("merge").contracts(input=(Facts, Style), output=Merged).engine(merge_engine).reacts_to(fact, style)
    publish = (agent("publish").contracts(input=Merged, output=Published).engine(publish_engine)
               .reacts_to(merge).needs_approval())
    return App([plan, fact, style, merge, publish], name=APP_NAME, journal=journal)


async def main(journal: str, run_id: str) -> dict[str, object]:
    approve = os.environ.get("ROOST_CRASH_APPROVE", "auto")
    app = build_app(journal)
    async with app:
        handle = await app.start(RUN_INPUT, run_id)
        name = await handle.approval(timeout=None)
        if name is not None:
            if approve == "auto":
                try:
                    await app.aresolve(run_id, name, True)
                except PromiseError:
                    pass  # resolved already (before a crash, or by the test)
            elif blocks("approval"):
                marker("approval")
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
    journal_path, run, counters, SCENARIO = sys.argv[1:]
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main(journal_path, run)), sort_keys=True), flush=True)
