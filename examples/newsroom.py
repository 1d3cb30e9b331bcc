"""The demo pipeline: five agents with fan-out, converge and a human approval.

    writer ──► critic ───────┐
       │                     ├──► editor (needs approval) ──► publisher
       └────► fact_checker ──┘

Run it with ``make demo`` (or ``python examples/newsroom.py``). The journal is
``.roost/roost.db``: kill the process at any point and run it again with the same run id
(``--run-id``) to see it finish without redoing what was done. With ``--prod`` the same code
runs on Restate (``roost dev restate`` starts one locally), or on Temporal with
``ROOST_RUNTIME=temporal`` (``roost dev temporal``).

When a model endpoint is configured in the environment (``ROOST_LLM_BASE_URL``, or an API key in
``ROOST_LLM_API_KEY`` / ``OPENAI_API_KEY``), the writer, critic and fact checker are model calls
(``ROOST_DEMO_MODEL``, default ``openai/gpt-4o-mini``); otherwise they are the plain functions
below. The demo says which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from pydantic import BaseModel

from roost import App, agent


class Idea(BaseModel):
    topic: str


class Draft(BaseModel):
    title: str
    body: str


class Review(BaseModel):
    score: int
    notes: str


class FactCheck(BaseModel):
    claims_checked: int
    problems: list[str]


class Verdict(BaseModel):
    publish: bool
    title: str
    reason: str


class Published(BaseModel):
    url: str


def write_draft(idea: Idea) -> Draft:
    time.sleep(0.05)  # stands in for a model call: sync functions run in a worker thread
    return Draft(
        title=f"Why {idea.topic} matter",
        body=f"{idea.topic.capitalize()} keep their promises: every step is journaled and nothing runs twice.",
    )


async def review(draft: Draft) -> Review:
    await asyncio.sleep(0.05)
    return Review(score=min(10, len(draft.body) // 10), notes="clear and short")


async def check_facts(draft: Draft) -> FactCheck:
    await asyncio.sleep(0.05)
    return FactCheck(claims_checked=draft.body.count(":") + 1, problems=[])


def decide(draft: Draft, review: Review, facts: FactCheck) -> Verdict:
    ok = review.score >= 5 and not facts.problems
    return Verdict(publish=ok, title=draft.title, reason=f"score {review.score}, {len(facts.problems)} problem(s)")


def publish(verdict: Verdict) -> Published:
    return Published(url="https://example.invalid/" + verdict.title.lower().replace(" ", "-"))


writer = agent("writer").contracts(input=Idea, output=Draft).engine(write_draft)
critic = agent("critic").contracts(input=Draft, output=Review).engine(review)
fact_checker = agent("fact_checker").contracts(input=Draft, output=FactCheck).engine(check_facts)
editor = agent("editor").contracts(input=(Draft, Review, FactCheck), output=Verdict).engine(decide)
publisher = agent("publisher").contracts(input=Verdict, output=Published).engine(publish)

critic.reacts_to(writer)
fact_checker.reacts_to(writer)  # fan-out: both react to the writer
editor.reacts_to(writer, critic, fact_checker).needs_approval()  # converge, then a human approves
publisher.reacts_to(editor, when=lambda v: v.publish)


def demo_model() -> str | None:
    """The model to use when the environment configures an endpoint, else None."""
    if any(os.environ.get(v) for v in ("ROOST_LLM_BASE_URL", "ROOST_LLM_API_KEY", "OPENAI_API_KEY")):
        return os.environ.get("ROOST_DEMO_MODEL", "openai/gpt-4o-mini")
    return None


MODEL = demo_model()
if MODEL:  # the same contracts and wiring; only the engines change
    writer.model(MODEL, max_tokens=300, system="Write a short news article about the topic: a title and a body.")
    critic.model(MODEL, max_tokens=200, system="Review the draft: a score from 0 to 10 and one line of notes.")
    fact_checker.model(MODEL, max_tokens=200, system="Count the factual claims in the draft and list any problems.")

app = App([writer, critic, fact_checker, editor, publisher], name="newsroom")


async def main(topic: str, run_id: str | None, prod: bool) -> None:
    handle = await app.start(Idea(topic=topic), run_id=run_id, mode="prod" if prod else "local")
    where = "the prod runtime (ROOST_RUNTIME, default restate)" if prod else "the embedded runtime (journal .roost/roost.db)"
    print(f"run {handle.run_id} started on {where}")
    if MODEL:
        endpoint = os.environ.get("ROOST_LLM_BASE_URL") or "the provider's default endpoint"
        print(f"engines: the LLM engine ({MODEL} at {endpoint}) for writer, critic and fact_checker")
    else:
        print("engines: plain functions (no model endpoint configured; set ROOST_LLM_BASE_URL to use a model)")
    waiting = await handle.approval(timeout=300 if MODEL else 30)
    if waiting:
        print(f"the run waits for approval of {waiting!r}; the demo approves it "
              f"(from a shell: roost resolve {handle.run_id} {waiting} true)")
        await app.aresolve(handle.run_id, waiting, True)
    result = await handle.result(timeout=300 if MODEL else 30)
    print(f"status: {result.status}")
    for name, output in result.outputs.items():
        print(f"  {name:13} {json.dumps(output.model_dump())}")
    print("timings (s): " + ", ".join(f"{k} {v:.3f}" for k, v in result.timings.items()))
    await app.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", default="durable agents")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--prod", action="store_true",
                        help="run on the prod runtime (start a local Restate with 'roost dev restate' first)")
    args = parser.parse_args()
    asyncio.run(main(args.topic, args.run_id, args.prod))
