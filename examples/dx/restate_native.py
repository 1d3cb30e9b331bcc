"""The demo pipeline of examples/newsroom.py written by hand on the raw Restate Python SDK (1.3).

    writer ──► critic ───────┐
       │                     ├──► editor (needs approval) ──► publisher
       └────► fact_checker ──┘

One Restate Workflow per run, keyed by the run id (so a second start with the same id is
deduplicated and returns the recorded result). Each agent is one ``ctx.run_typed`` step, the
critic and the fact checker run in parallel, and the approval is a durable promise resolved
from outside through the workflow's shared ``approve`` handler.

    python examples/dx/restate_native.py --ingress http://127.0.0.1:8080 --admin http://127.0.0.1:9070

serves the endpoint in-process (hypercorn, HTTP/2), registers it, runs one pipeline, approves
it, prints the result and stops. ``build_app()`` and ``run_once()`` are what a benchmark uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from datetime import timedelta

import httpx
import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import BaseModel

# --- the pipeline definition (counted in docs/dx.md) ---


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


class Outcome(BaseModel):
    """What the workflow returns: every agent's output, and whether the verdict was approved."""

    approved: bool
    writer: Draft
    critic: Review
    fact_checker: FactCheck
    editor: Verdict
    publisher: Published | None = None


def write_draft(idea: Idea) -> Draft:
    time.sleep(0.05)  # stands in for a model call: the SDK runs sync actions in a thread pool
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


# The same retry policy as roost's default RetryPolicy(): 3 attempts, 0.2 s doubling up to 30 s.
# Without max_attempts a failing ctx.run is retried by Restate without end.
STEP = restate.RunOptions(
    max_attempts=3,
    initial_retry_interval=timedelta(milliseconds=200),
    retry_interval_factor=2.0,
    max_retry_interval=timedelta(seconds=30),
)

newsroom = restate.Workflow("Newsroom")


@newsroom.main()
async def run(ctx: restate.WorkflowContext, idea: Idea) -> Outcome:
    draft = await ctx.run_typed("writer", write_draft, STEP, idea)
    # fan-out: both steps are started before either is awaited, so they run in parallel
    review_f = ctx.run_typed("critic", review, STEP, draft)
    facts_f = ctx.run_typed("fact_checker", check_facts, STEP, draft)
    await restate.gather(review_f, facts_f)
    rev, facts = await review_f, await facts_f
    # converge: the editor sees all three outputs
    verdict = await ctx.run_typed("editor", decide, STEP, draft, rev, facts)
    # tell whoever waits in `awaiting_approval`, then wait for the human's answer
    await ctx.promise("verdict", type_hint=Verdict).resolve(verdict)
    approved = await ctx.promise("approval", type_hint=bool).value()
    published = None
    if approved and verdict.publish:
        published = await ctx.run_typed("publisher", publish, STEP, verdict)
    return Outcome(approved=approved, writer=draft, critic=rev, fact_checker=facts, editor=verdict, publisher=published)


@newsroom.handler()
async def awaiting_approval(ctx: restate.WorkflowSharedContext) -> Verdict:
    """Returns the editor's verdict once the run waits for its approval (blocks until then)."""
    return await ctx.promise("verdict", type_hint=Verdict).value()


@newsroom.handler()
async def approve(ctx: restate.WorkflowSharedContext, approved: bool) -> bool:
    """Answers the approval; a repeated call returns the first answer instead of failing."""
    promise = ctx.promise("approval", type_hint=bool)
    earlier = await promise.peek()
    if earlier is not None:
        return earlier
    await promise.resolve(approved)
    return approved


def build_app():
    """The ASGI app serving the Newsroom workflow (register it with Restate over HTTP/2)."""
    return restate.app([newsroom])


# --- client: drive one run through the ingress (not counted as pipeline definition) ---


async def run_once(client: httpx.AsyncClient, ingress: str, run_id: str, topic: str) -> dict:
    """Start run ``run_id`` (idempotent), wait until it waits for approval, approve it and
    return the workflow's output as a dict. The endpoint must already be registered."""
    base = f"{ingress.rstrip('/')}/Newsroom/{run_id}"
    started = await client.post(f"{base}/run/send", json={"topic": topic})
    started.raise_for_status()  # 202: {"status": "Accepted"}, or "PreviouslyAccepted" for a known run id
    (await client.post(f"{base}/awaiting_approval")).raise_for_status()
    (await client.post(f"{base}/approve", json=True)).raise_for_status()
    result = await client.get(f"{ingress.rstrip('/')}/restate/workflow/Newsroom/{run_id}/attach")
    result.raise_for_status()
    return result.json()


# --- serving, registration and CLI harness (not counted) ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hypercorn_config(port: int) -> Config:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]  # h2c (HTTP/2 with prior knowledge), as Restate speaks it
    config.keep_alive_max_requests = 2**31 - 1  # default 1000 closes in-flight invocations' connections
    config.h2_max_concurrent_streams = 2**31 - 1  # one stream per in-flight invocation
    config.graceful_timeout = 1.0  # Restate keeps pooled connections open; don't wait long at shutdown
    config.accesslog = None
    return config


async def start_server(port: int) -> tuple[asyncio.Task, asyncio.Event]:
    """Serve build_app() in this process until the returned event is set."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(build_app(), hypercorn_config(port), shutdown_trigger=stop.wait))
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if task.done():
                task.result()  # raises the bind error, say
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return task, stop
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.025)
    stop.set()
    raise RuntimeError(f"the endpoint did not come up on port {port}")


async def register(client: httpx.AsyncClient, admin: str, port: int) -> dict:
    response = await client.post(
        f"{admin.rstrip('/')}/deployments", json={"uri": f"http://127.0.0.1:{port}", "force": True}
    )
    response.raise_for_status()
    return response.json()


async def main(ingress: str, admin: str, port: int, run_id: str, topic: str) -> None:
    port = port or free_port()
    task, stop = await start_server(port)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            deployment = await register(client, admin, port)
            print(f"endpoint http://127.0.0.1:{port} registered as {deployment.get('id')}")
            t0 = time.perf_counter()
            base = f"{ingress.rstrip('/')}/Newsroom/{run_id}"
            started = (await client.post(f"{base}/run/send", json={"topic": topic})).raise_for_status().json()
            print(f"run {run_id} started: {started.get('status')} ({started.get('invocationId')})")
            verdict = (await client.post(f"{base}/awaiting_approval")).raise_for_status().json()
            print(f"the editor's verdict waits for approval: {json.dumps(verdict)}; approving it")
            answer = (await client.post(f"{base}/approve", json=True)).raise_for_status().json()
            print(f"approval recorded: {answer}" + ("" if started.get("status") == "Accepted" else " (earlier)"))
            result = await client.get(f"{ingress.rstrip('/')}/restate/workflow/Newsroom/{run_id}/attach")
            outcome = result.raise_for_status().json()
            print(f"result after {time.perf_counter() - t0:.3f} s:")
            for name, output in outcome.items():
                print(f"  {name:13} {json.dumps(output)}")
    finally:
        stop.set()
        await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingress", required=True, help="Restate ingress URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--admin", required=True, help="Restate admin URL, e.g. http://127.0.0.1:9070")
    parser.add_argument("--port", type=int, default=0, help="port for the endpoint on 127.0.0.1 (default: a free one)")
    parser.add_argument("--run-id", default="newsroom-1")
    parser.add_argument("--topic", default="durable agents")
    args = parser.parse_args()
    asyncio.run(main(args.ingress, args.admin, args.port, args.run_id, args.topic))
