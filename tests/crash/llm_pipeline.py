"""The LLM app the LLM crash test kills: runnable as a script.

    python tests/crash/llm_pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO

One agent, ``researcher``, answers a question with a model (``ROOST_LLM_BASE_URL``, the test's
scripted server; key from ``ROOST_LLM_API_KEY``) that calls two tools, ``search`` and
``multiply``. Each tool appends a JSON line to ``COUNTER_DIR/researcher.<tool>.log`` (fsync'ed)
when it starts and just before it returns: counters outside the journal.

SCENARIO ``tool``: ``multiply`` writes ``COUNTER_DIR/at-tool`` and blocks for an hour, waiting
to be killed. ``none``: nothing blocks. The last stdout line is JSON: {"status", "output", "pid"}.
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

from roost import App, agent, current_step, tool

# Counter lines are written the same way as the other crash pipelines' (fsync'ed appends).
if __package__:
    from ._steps import append as _append
else:
    from _steps import append as _append

APP_NAME = "crashllm"
MODEL = "crash-model"
QUESTION = {"text": "how durable are agents?"}
BLOCK_SECONDS = 3600.0

SCENARIO = "none"
COUNTER_DIR = Path(".")


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    summary: str
    product: int


def effect(step: str, event: str) -> None:
    info = current_step()
    line = json.dumps({"event": event, "pid": os.getpid(), "attempt": info.attempt, "key": info.idempotency_key,
                       "step": info.name, "agent": info.agent, "at": time.time()})
    _append(COUNTER_DIR / f"researcher.{step}.log", line + "\n")


@tool
def search(query: str) -> list[str]:
    """Search the archive."""
    effect("search", "start")
    hits = [f"{query}: journaled steps", f"{query}: idempotency keys"]
    effect("search", "done")
    return hits


@tool
async def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    effect("multiply", "start")
    if SCENARIO == "tool":
        _append(COUNTER_DIR / "at-tool", f"{os.getpid()}\n")
        await asyncio.sleep(BLOCK_SECONDS)
    effect("multiply", "done")
    return a * b


def build_app(journal: str | os.PathLike[str]) -> App:
    researcher = (agent("researcher").contracts(input=Question, output=Answer)
                  .model(f"openai/{MODEL}", timeout=BLOCK_SECONDS, system="Use the tools.")
                  .with_tools(search, multiply)
                  .retry(max_attempts=3, initial_interval=0.05))
    return App([researcher], name=APP_NAME, journal=journal)


async def main(journal: str, run_id: str) -> dict[str, object]:
    async with build_app(journal) as app:
        result = await app.arun(QUESTION, run_id=run_id)
        return {"status": result.status, "output": pydantic_core.to_jsonable_python(result["researcher"]),
                "pid": os.getpid()}


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: llm_pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO")
    journal_path, run, counters, SCENARIO = sys.argv[1:]
    COUNTER_DIR = Path(counters)
    COUNTER_DIR.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main(journal_path, run)), sort_keys=True), flush=True)
