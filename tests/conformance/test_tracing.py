"""OpenTelemetry spans on every runtime: names, GenAI attributes, one trace per run, and no span
twice although durable code replays (``restate-replay`` replays at every step,
``temporal-continue`` carries runs into new workflow runs)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from roost import DurableContext, RetryPolicy, agent, tool
from roost._tracing import activation_span_id, run_span_id, trace_id
from roost.testing import FakeModelServer, Reply

from ..tracing_support import exporter, failing_processor, spans_of, wait_spans
from .conftest import MakeApp
from .models import Done, Draft, Idea, Review

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01)


@pytest.fixture(scope="session")
def model_server() -> Any:
    with FakeModelServer() as server:
        yield server


def has_run_span(app: str) -> Callable[[list[Any]], bool]:
    return lambda spans: any(s.name == f"run {app}" for s in spans)


async def test_spans_of_a_run(make_app: MakeApp, model_server: FakeModelServer, uid: Callable[[str], str]) -> None:
    exporter()
    model = uid("traced")
    failures: list[int] = []

    def flaky(topic: str) -> str:
        if not failures:
            failures.append(1)
            raise ConnectionError("hiccup")
        return f"draft about {topic}"

    async def writer(idea: Idea, ctx: DurableContext) -> Draft:
        title = await ctx.step("title", lambda: idea.topic.title())
        body = await ctx.step("body", flaky, idea.topic, retry=FAST)
        return Draft(title=title, body=body)

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    model_server.script(model, Reply.tool_call("multiply", a=6, b=7), Reply.answer(Review(score=8, notes="ok")))
    critic = (agent("critic").contracts(input=Draft, output=Review)
              .model(f"openai/{model}", base_url=model_server.base_url).with_tools(multiply).retry(FAST))
    writer_agent = agent("writer").contracts(input=Idea, output=Draft).engine(writer).retry(FAST)
    app = make_app([writer_agent, critic.reacts_to(writer_agent)])
    run_id = uid("r-traced")
    result = await app.arun(Idea(topic="otel"), run_id=run_id)
    assert result["critic"] == Review(score=8, notes="ok")

    spans = await wait_spans(run_id, has_run_span(app.name))
    names = Counter(s.name for s in spans)
    assert names == Counter({f"run {app.name}": 1, "invoke_agent writer": 1, "invoke_agent critic": 1,
                             "step title": 1, "step body": 2, "step model call 1": 1, "step model call 2": 1,
                             "step tool multiply": 1, f"chat {model}": 2, "execute_tool multiply": 1}), names

    tid = trace_id(run_id)
    assert {s.context.trace_id for s in spans} == {tid}  # one trace per run
    by_name = {s.name: s for s in spans}
    run_span = by_name[f"run {app.name}"]
    assert run_span.context.span_id == run_span_id(run_id) and run_span.parent is None
    assert run_span.attributes["roost.run.status"] == "completed"

    writer_span, critic_span = by_name["invoke_agent writer"], by_name["invoke_agent critic"]
    for span, name in ((writer_span, "writer"), (critic_span, "critic")):
        assert span.attributes["gen_ai.agent.name"] == name
        assert span.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert span.parent is not None and span.parent.span_id == run_span_id(run_id)
        assert span.context.span_id == activation_span_id(run_id, span.attributes["roost.activation_id"])
    writer_id = writer_span.attributes["roost.activation_id"]
    assert writer_span.attributes.get("roost.caused_by") is None
    assert critic_span.attributes["roost.caused_by"] == writer_id  # causation

    body_attempts = sorted(s.attributes["roost.step.attempt"] for s in spans if s.name == "step body")
    assert body_attempts == [1, 2]
    for s in spans:
        assert s.attributes["roost.run_id"] == run_id
        if s.name.startswith("step "):
            parent = writer_span if s.name in ("step title", "step body") else critic_span
            assert s.parent is not None and s.parent.span_id == parent.context.span_id, s.name
            assert s.attributes["roost.activation_id"] == parent.attributes["roost.activation_id"]
    failed = [s for s in spans if s.name == "step body" and s.attributes["roost.step.attempt"] == 1]
    assert not failed[0].status.is_ok and "hiccup" in (failed[0].status.description or "")

    chats = [s for s in spans if s.name == f"chat {model}"]
    steps = {s.context.span_id: s.name for s in spans if s.name.startswith("step model call")}
    for chat in chats:
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == model
        assert chat.attributes["gen_ai.usage.input_tokens"] == 10
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
        assert chat.attributes["roost.caused_by"] == writer_id
        assert chat.parent is not None and chat.parent.span_id in steps
    tool_span = by_name["execute_tool multiply"]
    assert tool_span.attributes["gen_ai.tool.name"] == "multiply"
    assert tool_span.parent is not None and tool_span.parent.span_id == by_name["step tool multiply"].context.span_id


async def test_tracing_false_emits_nothing(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    exporter()

    async def work(idea: Idea, ctx: DurableContext) -> Done:
        return Done(value=await ctx.step("upper", lambda: idea.topic.upper()))

    traced = make_app([agent("a").contracts(input=Idea, output=Done).engine(work)])
    quiet = make_app([agent("a").contracts(input=Idea, output=Done).engine(work)], tracing=False)
    on, off = uid("r-on"), uid("r-off")
    assert (await quiet.arun(Idea(topic="x"), run_id=off))["a"] == Done(value="X")
    assert (await traced.arun(Idea(topic="x"), run_id=on))["a"] == Done(value="X")
    spans = await wait_spans(on, has_run_span(traced.name))
    assert sorted(s.name for s in spans) == sorted([f"run {traced.name}", "invoke_agent a", "step upper"])
    assert spans_of(off) == []  # the traced run came after it: its spans would be there by now


async def test_spans_come_as_activations_end(make_app: MakeApp, uid: Callable[[str], str]) -> None:
    """A run waiting on an approval already shows what ran before it; resuming it (a replay on
    Restate and Temporal) makes no span twice."""
    exporter()

    async def write(idea: Idea, ctx: DurableContext) -> Draft:
        body = await ctx.step("body", lambda: f"about {idea.topic}")
        return Draft(title=idea.topic, body=body)

    w = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    e = agent("editor").contracts(input=Draft, output=Review).engine(lambda d: Review(score=9, notes=d.body))
    e.needs_approval().reacts_to(w)
    app = make_app([w, e])
    handle = await app.start(Idea(topic="spans"), run_id=uid("r-waiting"))
    assert await handle.approval(timeout=30) == "editor"
    before = {"invoke_agent writer", "step body", "invoke_agent editor", "step editor"}
    waiting = await wait_spans(handle.run_id, lambda spans: before <= {s.name for s in spans})
    assert before <= {s.name for s in waiting}, [s.name for s in waiting]
    assert f"run {app.name}" not in {s.name for s in waiting}  # the run is not over

    await app.aresolve(handle.run_id, "editor", True)
    assert (await handle.result(timeout=30)).status == "completed"
    spans = await wait_spans(handle.run_id, lambda spans: has_run_span(app.name)(spans)
                             and "invoke_agent editor" in {s.name for s in spans})
    names = Counter(s.name for s in spans)
    assert names == Counter({f"run {app.name}": 1, "invoke_agent writer": 1, "invoke_agent editor": 1,
                             "step body": 1, "step editor": 1}), names
    # The editor's span is made as its activation ends, its output held for the approval.
    editor = next(s for s in spans if s.name == "invoke_agent editor")
    assert editor.attributes["roost.activation.status"] == "waiting"


async def test_a_broken_tracer_never_changes_a_run(make_app: MakeApp, uid: Callable[[str], str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Every span of the run raises in the provider's span processor: the run is unchanged
    (its steps ran once, it completes), the spans are lost, and the log says so."""
    broken = failing_processor()
    runs: list[str] = []

    async def write(idea: Idea, ctx: DurableContext) -> Draft:
        body = await ctx.step("body", lambda: runs.append(idea.topic) or f"about {idea.topic}")
        return Draft(title=idea.topic, body=body)

    w = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    e = agent("editor").contracts(input=Draft, output=Review).engine(lambda d: Review(score=9, notes=d.body))
    app = make_app([w, e.reacts_to(w)])
    run_id = uid("r-broken-tracer")
    broken.runs.add(run_id)
    caplog.set_level(logging.DEBUG, logger="roost.tracing")
    try:
        result = await app.arun(Idea(topic="t"), run_id=run_id)
    finally:
        broken.runs.discard(run_id)
    assert result["editor"] == Review(score=9, notes="about t")
    assert runs == ["t"]
    assert broken.raised > 0
    lost = [r for r in caplog.records if r.name == "roost.tracing" and "was not made" in r.getMessage()]
    assert lost and all(getattr(r, "run_id", None) == run_id for r in lost)
