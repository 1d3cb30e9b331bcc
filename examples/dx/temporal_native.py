"""The demo pipeline of examples/newsroom.py written by hand on the raw Temporal Python SDK (1.35).

    writer ──► critic ───────┐
       │                     ├──► editor (needs approval) ──► publisher
       └────► fact_checker ──┘

One Temporal workflow per run, its workflow id = the run id (a second start with the same id
attaches to the running workflow, or returns the recorded result of a finished one). Each agent
is one activity, the critic and the fact checker run in parallel, and the approval is a
workflow update: ``awaiting_approval`` blocks until the editor's verdict is there and returns
it, ``approve`` records the human's answer. The worker and the client run in this process.

    python examples/dx/temporal_native.py                          # starts its own dev server (in memory)
    python examples/dx/temporal_native.py --address 127.0.0.1:7233 --run-id r1

runs one pipeline, approves it, prints the result and stops. ``Newsroom``, ``ACTIVITIES``,
``worker()`` and ``run_once()`` are what a benchmark uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    # Not needed by the workflow; without this the sandbox re-imports roost (and what it
    # imports) for every workflow run, and fails on anything restricted at import time.
    from roost.runtime.temporal._server import TemporalDevServer

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


@activity.defn(name="writer")
def write_draft(idea: Idea) -> Draft:
    time.sleep(0.05)  # stands in for a model call: sync activities run in the worker's activity_executor
    return Draft(
        title=f"Why {idea.topic} matter",
        body=f"{idea.topic.capitalize()} keep their promises: every step is journaled and nothing runs twice.",
    )


@activity.defn(name="critic")
async def review(draft: Draft) -> Review:
    await asyncio.sleep(0.05)
    return Review(score=min(10, len(draft.body) // 10), notes="clear and short")


@activity.defn(name="fact_checker")
async def check_facts(draft: Draft) -> FactCheck:
    await asyncio.sleep(0.05)
    return FactCheck(claims_checked=draft.body.count(":") + 1, problems=[])


@activity.defn(name="editor")
def decide(draft: Draft, review: Review, facts: FactCheck) -> Verdict:
    ok = review.score >= 5 and not facts.problems
    return Verdict(publish=ok, title=draft.title, reason=f"score {review.score}, {len(facts.problems)} problem(s)")


@activity.defn(name="publisher")
def publish(verdict: Verdict) -> Published:
    return Published(url="https://example.invalid/" + verdict.title.lower().replace(" ", "-"))


ACTIVITIES = [write_draft, review, check_facts, decide, publish]

# The same retry policy as roost's default RetryPolicy(): 3 attempts, 0.2 s doubling up to 30 s
# (Temporal's default retries without end). A timeout is required on every activity call.
STEP = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(
        maximum_attempts=3,
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
}


@workflow.defn(name="Newsroom")
class Newsroom:
    def __init__(self) -> None:
        self.verdict: Verdict | None = None
        self.approved: bool | None = None

    @workflow.run
    async def run(self, idea: Idea) -> Outcome:
        draft = await workflow.execute_activity(write_draft, idea, **STEP)
        # fan-out: both activities are scheduled before either is awaited, so they run in parallel
        rev, facts = await asyncio.gather(
            workflow.execute_activity(review, draft, **STEP),
            workflow.execute_activity(check_facts, draft, **STEP),
        )
        # converge: the editor sees all three outputs
        verdict = await workflow.execute_activity(decide, args=[draft, rev, facts], **STEP)
        self.verdict = verdict  # lets awaiting_approval return
        await workflow.wait_condition(lambda: self.approved is not None)
        approved = bool(self.approved)
        published = None
        if approved and verdict.publish:
            published = await workflow.execute_activity(publish, verdict, **STEP)
        return Outcome(
            approved=approved, writer=draft, critic=rev, fact_checker=facts, editor=verdict, publisher=published
        )

    @workflow.update
    async def awaiting_approval(self) -> Verdict:
        """Returns the editor's verdict once the run waits for its approval (blocks until then)."""
        await workflow.wait_condition(lambda: self.verdict is not None)
        assert self.verdict is not None
        return self.verdict

    @workflow.update
    def approve(self, approved: bool) -> bool:
        """Answers the approval; a repeated call returns the first answer instead of changing it."""
        if self.approved is None:
            self.approved = approved
        return self.approved


def worker(client: Client, task_queue: str, executor: ThreadPoolExecutor) -> Worker:
    """The worker for the Newsroom workflow and its activities (sync ones run in ``executor``)."""
    return Worker(
        client, task_queue=task_queue, workflows=[Newsroom], activities=ACTIVITIES, activity_executor=executor
    )


# --- client: drive one run (not counted as pipeline definition) ---


async def connect(address: str, namespace: str = "default") -> Client:
    """A client whose data converter (de)serializes the pydantic models."""
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)


async def start(client: Client, run_id: str, topic: str, task_queue: str) -> WorkflowHandle[Newsroom, Outcome] | None:
    """Start run ``run_id``, or attach to it while it runs; None if a finished run has this id."""
    try:
        return await client.start_workflow(
            Newsroom.run,
            Idea(topic=topic),
            id=run_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,  # running: attach to it
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,  # finished: never run it again
        )
    except WorkflowAlreadyStartedError:
        return None


async def run_once(client: Client, run_id: str, topic: str, task_queue: str) -> Outcome:
    """Start run ``run_id`` (idempotent), wait until it waits for approval, approve it and return
    the workflow's result. A worker must be polling ``task_queue``."""
    handle = await start(client, run_id, topic, task_queue)
    if handle is None:  # finished earlier: its recorded result
        return await client.get_workflow_handle_for(Newsroom.run, run_id).result()
    try:
        await handle.execute_update(Newsroom.awaiting_approval)
        await handle.execute_update(Newsroom.approve, True)
    except RPCError as exc:  # the run finished in between (someone else answered): nothing to approve
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    return await handle.result()


# --- dev server and CLI harness (not counted) ---


async def connect_when_ready(address: str, timeout: float = 15.0) -> Client:
    """connect(), retried while a dev server that just started answers "Frontend is not healthy yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(address: str | None, task_queue: str, run_id: str, topic: str) -> None:
    with tempfile.TemporaryDirectory(prefix="temporal-native-") as tmp:
        server = None
        if address is None:
            server = TemporalDevServer(tmp, persist=False)
            await asyncio.to_thread(server.start)
            address = server.address
            print(f"started a Temporal dev server on {address} (pid {server.pid})")
        try:
            client = await connect_when_ready(address)
            with ThreadPoolExecutor(max_workers=16) as executor:
                async with worker(client, task_queue, executor):
                    t0 = time.perf_counter()
                    handle = await start(client, run_id, topic, task_queue)
                    if handle is None:
                        print(f"run {run_id} finished earlier: its recorded result")
                        outcome = await client.get_workflow_handle_for(Newsroom.run, run_id).result()
                    else:
                        print(f"run {run_id} started or attached (workflow run {handle.result_run_id})")
                        verdict = await handle.execute_update(Newsroom.awaiting_approval)
                        print(f"the editor's verdict waits for approval: {verdict.model_dump_json()}; approving it")
                        print(f"approval recorded: {await handle.execute_update(Newsroom.approve, True)}")
                        outcome = await handle.result()
                    print(f"result after {time.perf_counter() - t0:.3f} s:")
                    for name, output in outcome.model_dump().items():
                        print(f"  {name:13} {json.dumps(output)}")
        finally:
            if server is not None:
                await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--address", default=None, help="Temporal frontend, e.g. 127.0.0.1:7233 (default: start a dev server in memory)"
    )
    parser.add_argument("--task-queue", default="newsroom-native")
    parser.add_argument("--run-id", default="newsroom-1")
    parser.add_argument("--topic", default="durable agents")
    args = parser.parse_args()
    asyncio.run(main(args.address, args.task_queue, args.run_id, args.topic))
