"""The LLM engine on every runtime, against the scripted model server of roost.testing.

Each test scripts its own model name (unique per test and runtime), so one server serves the
whole session. Model calls and tool calls are durable steps: the server's request log shows
what was asked, and how often.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic_core
import pytest

from roost import Agent, RetryPolicy, RunFailedError, agent, current_step, tool
from roost.testing import FakeModelServer, Reply

from .conftest import MakeApp
from .models import Done, Draft, Idea, Item, Review, Verdict

# One event loop for the suite: the in-process Restate endpoint outlives each test.
pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01)
DRAFT = Draft(title="Durable agents", body="They survive crashes.")


@pytest.fixture(scope="session")
def model_server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


def critic(model: str, server: FakeModelServer, **settings: Any) -> Agent:
    settings.setdefault("base_url", server.base_url)
    return agent("critic").contracts(input=Draft, output=Review).model(f"openai/{model}", **settings).retry(FAST)


def journal_files(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.glob("journal.db*")}


def last(messages: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return next(m for m in reversed(messages) if m["role"] == role)


async def test_structured_output_with_per_agent_settings(make_app: MakeApp, model_server: FakeModelServer,
                                                         uid: Callable[[str], str]) -> None:
    model = uid("structured")
    model_server.script(model, Reply.answer(Review(score=8, notes="clear")))
    a = critic(model, model_server, temperature=0.2, max_tokens=400, system="You review drafts strictly.")
    result = await make_app([a]).arun(DRAFT, run_id=uid("r-structured"))

    assert result["critic"] == Review(score=8, notes="clear")
    [body] = model_server.requests(model)
    assert body["model"] == model and body["temperature"] == 0.2 and body["max_tokens"] == 400
    assert "tools" not in body
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Review"
    schema = fmt["json_schema"]["schema"]
    assert set(schema["properties"]) == {"score", "notes"} and set(schema["required"]) == {"score", "notes"}
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You review drafts strictly.")
    assert user["role"] == "user" and json.loads(user["content"].split("\n", 1)[1]) == DRAFT.model_dump()
    steps = [s.name for act in result.record.activations for s in act.steps]
    assert steps in ([], ["model call 1"])  # runtimes that list steps name them readably


async def test_converge_renders_every_input(make_app: MakeApp, model_server: FakeModelServer,
                                            uid: Callable[[str], str]) -> None:
    model = uid("converge")
    model_server.script(model, Reply.answer(Verdict(publish=True, title="T")))
    w = agent("writer").contracts(input=Idea, output=Draft).engine(lambda i: Draft(title=i.topic, body="body"))
    c = agent("reviewer").contracts(input=Idea, output=Review).engine(lambda i: Review(score=7, notes="fine"))
    e = (agent("editor").contracts(input=(Draft, Review), output=Verdict)
         .model(f"openai/{model}", base_url=model_server.base_url).reacts_to(w, c))
    result = await make_app([w, c, e]).arun(Idea(topic="T"))

    assert result["editor"] == Verdict(publish=True, title="T")
    user = model_server.requests(model)[0]["messages"][1]["content"]
    assert "Draft:" in user and '"body": "body"' in user
    assert "Review:" in user and '"notes": "fine"' in user


async def test_tool_calls_are_steps_with_stable_idempotency_keys(make_app: MakeApp, model_server: FakeModelServer,
                                                                 uid: Callable[[str], str]) -> None:
    model = uid("tools")
    keys: dict[str, list[str]] = {"search": [], "multiply": []}

    @tool
    def search(query: str, limit: int = 2) -> list[str]:
        """Search the archive."""
        keys["search"].append(current_step().idempotency_key)
        if len(keys["search"]) == 1:
            raise ConnectionError("search backend hiccup")  # retried with the same key
        return [f"{query} #{i}" for i in range(limit)]

    async def multiply(a: int, b: int) -> int:
        keys["multiply"].append(current_step().idempotency_key)
        return a * b

    model_server.script(model, Reply.tool_calls(("search", {"query": "durable"}), ("multiply", {"a": 6, "b": 7})),
                        Reply.answer(Review(score=42, notes="searched")))
    a = critic(model, model_server).with_tools(search, multiply)
    run_id = uid("r-tools")
    result = await make_app([a]).arun(DRAFT, run_id=run_id)

    assert result["critic"] == Review(score=42, notes="searched")
    assert len(keys["search"]) == 2 and len(set(keys["search"])) == 1, keys
    assert len(keys["multiply"]) == 1 and keys["multiply"][0] != keys["search"][0]
    assert all(run_id in k for k in keys["search"] + keys["multiply"])

    first, second = model_server.requests(model)  # the tool retry asked the model nothing again
    specs = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert specs["search"]["description"] == "Search the archive."
    assert specs["search"]["parameters"]["required"] == ["query"]
    assert set(specs["multiply"]["parameters"]["properties"]) == {"a", "b"}
    asked = last(second["messages"], "assistant")["tool_calls"]
    results = [m for m in second["messages"] if m["role"] == "tool"]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in asked]
    assert json.loads(results[0]["content"]) == ["durable #0", "durable #1"] and results[1]["content"] == "42"
    steps = [s.name for act in result.record.activations for s in act.steps]
    assert steps in ([], ["model call 1", "tool search", "tool multiply", "model call 2"])


async def test_invalid_tool_calls_are_fed_back(make_app: MakeApp, model_server: FakeModelServer,
                                               uid: Callable[[str], str]) -> None:
    model = uid("badargs")
    calls: list[tuple[int, int]] = []

    def multiply(a: int, b: int) -> int:
        calls.append((a, b))
        return a * b

    model_server.script(model, Reply.tool_call("multiply", a="two", b=3), Reply.tool_call("divide", a=1),
                        Reply.tool_call("multiply", "{not json"), Reply.tool_call("multiply", a=2, b=3),
                        Reply.answer(Review(score=6, notes="done")))
    result = await make_app([critic(model, model_server).with_tools(multiply)]).arun(DRAFT)

    assert result["critic"] == Review(score=6, notes="done")
    assert calls == [(2, 3)]
    requests = model_server.requests(model)
    assert len(requests) == 5
    fed_back = [last(r["messages"], "tool")["content"] for r in requests[1:4]]
    assert "invalid arguments for tool 'multiply'" in fed_back[0] and "a: Input should be a valid integer" in fed_back[0]
    assert "no tool named 'divide'" in fed_back[1] and "multiply" in fed_back[1]
    assert "not JSON" in fed_back[2]


async def test_too_many_invalid_tool_calls_fail(make_app: MakeApp, model_server: FakeModelServer,
                                                uid: Callable[[str], str]) -> None:
    model = uid("badargs-max")

    def multiply(a: int, b: int) -> int:
        return a * b

    model_server.always(model, Reply.tool_call("multiply", a="x", b="y"))
    app = make_app([critic(model, model_server, max_tool_errors=1).with_tools(multiply)])
    with pytest.raises(RunFailedError) as info:
        await app.arun(DRAFT, run_id=uid("r-badargs"))
    assert info.value.error_type == "ContractViolationError" and info.value.agent == "critic"
    assert "max_tool_errors=1" in info.value.error_message and uid("r-badargs") in info.value.error_message
    assert len(model_server.requests(model)) == 2


async def test_tool_loop_is_bounded(make_app: MakeApp, model_server: FakeModelServer,
                                    uid: Callable[[str], str]) -> None:
    model = uid("loop")
    ran: list[int] = []

    def ping(n: int) -> str:
        ran.append(n)
        return "pong"

    model_server.always(model, Reply.tool_call("ping", n=1))
    app = make_app([critic(model, model_server, max_turns=2).with_tools(ping)])
    with pytest.raises(RunFailedError) as info:
        await app.arun(DRAFT, run_id=uid("r-loop"))
    err = info.value
    assert err.agent == "critic" and "max_turns=2" in err.error_message and uid("r-loop") in err.error_message
    assert len(model_server.requests(model)) == 3 and ran == [1, 1]


async def test_malformed_answer_is_retried_with_the_error_fed_back(make_app: MakeApp, model_server: FakeModelServer,
                                                                   uid: Callable[[str], str]) -> None:
    model = uid("malformed")
    model_server.script(model, Reply.text('{"score": 9, "notes": '), Reply.answer({"score": "high", "notes": "x"}),
                        Reply.answer(Review(score=9, notes="fixed")))
    result = await make_app([critic(model, model_server)]).arun(DRAFT)

    assert result["critic"] == Review(score=9, notes="fixed")
    first, second, third = model_server.requests(model)
    assert last(second["messages"], "assistant")["content"] == '{"score": 9, "notes": '
    assert "Invalid JSON" in last(second["messages"], "user")["content"]
    feedback = last(third["messages"], "user")["content"]
    assert "Review" in feedback and "score: Input should be a valid integer" in feedback
    assert len(third["messages"]) == len(first["messages"]) + 4


async def test_exhausted_validation_retries_fail_naming_agent_field_and_run(
        make_app: MakeApp, model_server: FakeModelServer, uid: Callable[[str], str]) -> None:
    model = uid("invalid")
    model_server.script(model, Reply.answer({"score": "high", "notes": "x"}), Reply.answer({"notes": "x"}))
    app = make_app([critic(model, model_server, max_retries=1)])
    run_id = uid("r-invalid")
    with pytest.raises(RunFailedError) as info:
        await app.arun(DRAFT, run_id=run_id)
    err = info.value
    assert err.run_id == run_id and err.agent == "critic" and err.error_type == "ContractViolationError"
    assert "score" in err.error_message and "Field required" in err.error_message
    assert run_id in err.error_message and "'critic'" in err.error_message
    assert len(model_server.requests(model)) == 2
    assert (await app.aget(run_id)).record.status == "failed"


async def test_rate_limit_waits_for_retry_after(make_app: MakeApp, model_server: FakeModelServer,
                                                uid: Callable[[str], str]) -> None:
    model = uid("429")
    model_server.script(model, Reply.error(429, "Rate limit reached", retry_after=0.5),
                        Reply.answer(Review(score=5, notes="later")))
    result = await make_app([critic(model, model_server)]).arun(DRAFT)

    assert result["critic"] == Review(score=5, notes="later")
    t0, t1 = model_server.request_times(model)
    assert t1 - t0 >= 0.45, "Retry-After was not honoured"
    b0, b1 = model_server.requests(model)
    assert b0 == b1


async def test_server_errors_are_retried(make_app: MakeApp, model_server: FakeModelServer,
                                         uid: Callable[[str], str]) -> None:
    model = uid("5xx")
    model_server.script(model, Reply.error(500, "internal"), Reply.error(503, "overloaded"),
                        Reply.answer(Review(score=4, notes="third time")))
    result = await make_app([critic(model, model_server)]).arun(DRAFT)
    assert result["critic"] == Review(score=4, notes="third time")
    assert len(model_server.requests(model)) == 3


async def test_timeouts_are_retried(make_app: MakeApp, model_server: FakeModelServer,
                                    uid: Callable[[str], str]) -> None:
    model = uid("timeout")
    model_server.script(model, Reply.slow(2.0, Reply.answer(Review(score=1, notes="too late"))),
                        Reply.answer(Review(score=2, notes="in time")))
    t0 = time.monotonic()
    result = await make_app([critic(model, model_server, timeout=0.4)]).arun(DRAFT)
    assert result["critic"] == Review(score=2, notes="in time")
    assert len(model_server.requests(model)) == 2 and time.monotonic() - t0 < 2.0


async def test_client_errors_are_terminal_with_the_provider_message(
        make_app: MakeApp, model_server: FakeModelServer, uid: Callable[[str], str]) -> None:
    model = uid("400")
    model_server.script(model, Reply.error(400, "Invalid value for 'temperature': 7 is greater than 2",
                                           error_type="invalid_request_error"))
    app = make_app([critic(model, model_server)])
    with pytest.raises(RunFailedError) as info:
        await app.arun(DRAFT)
    err = info.value
    assert err.agent == "critic" and err.step == "model call 1" and err.attempts == 1
    assert err.error_type == "TerminalError"
    assert "HTTP 400" in err.error_message and "7 is greater than 2" in err.error_message
    assert len(model_server.requests(model)) == 1


async def test_concurrency_limit_per_model(make_app: MakeApp, model_server: FakeModelServer,
                                           uid: Callable[[str], str]) -> None:
    model = uid("limit")
    model_server.always(model, Reply.slow(0.15, Reply.answer(Done(value="ok"))))
    split = agent("split").contracts(input=Idea, output=list[Item]).engine(
        lambda i: [Item(name=f"{i.topic}{n}") for n in range(4)])
    each = (agent("each").contracts(input=Item, output=Done)
            .model(f"openai/{model}", base_url=model_server.base_url, max_concurrency=1)
            .reacts_to(split, each=True))
    result = await make_app([split, each]).arun(Idea(topic="t"))
    assert result["each"] == [Done(value="ok")] * 4
    assert len(model_server.requests(model)) == 4 and model_server.max_in_flight(model) == 1


async def test_api_key_never_reaches_journal_errors_or_logs(
        make_app: MakeApp, runtime_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, uid: Callable[[str], str]) -> None:
    secret, wrong = "sk-roost-test-" + "s3cr3t" * 4, "sk-roost-wrong-" + "w" * 24
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ROOST_LLM_API_KEY", secret)
    with FakeModelServer(api_key=secret) as server:
        model = uid("keys")

        def lookup(name: str) -> str:
            return f"{name}: found"

        server.script(model, Reply.tool_call("lookup", name="x"), Reply.answer(Review(score=3, notes="ok")))
        app = make_app([critic(model, server).with_tools(lookup)])
        ok_id = uid("r-key-ok")
        result = await app.arun(DRAFT, run_id=ok_id)  # the key was sent: the server demands it
        assert result["critic"] == Review(score=3, notes="ok")

        monkeypatch.setenv("ROOST_LLM_API_KEY", wrong)  # the server answers 401, echoing the key
        bad_id = uid("r-key-bad")
        with pytest.raises(RunFailedError) as info:
            await app.arun(DRAFT, run_id=bad_id)
        err = info.value
        assert err.error_type == "TerminalError" and "HTTP 401" in err.error_message
        assert "Incorrect API key provided" in err.error_message

        shown = [str(err), repr(err), json.dumps(err.to_json())]
        for run_id in (ok_id, bad_id):
            shown.append(pydantic_core.to_json((await app.aget(run_id)).record).decode())
        shown.append(caplog.text)
        for text in shown:
            assert secret not in text and wrong not in text
        if runtime_name == "local":  # the journal file itself, WAL included
            files = journal_files(tmp_path)
            assert files
            for path, data in files.items():
                assert secret.encode() not in data and wrong.encode() not in data, path
