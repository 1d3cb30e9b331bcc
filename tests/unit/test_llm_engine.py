"""Pure pieces of the LLM engine: model strings, settings, schemas, tools, errors, the test server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from roost import App, DurableContext, agent, tool
from roost._graph import CompiledApp
from roost.engines.llm import LLMEngine, OutputSchema, Tool, parse_model, render_inputs, strict_schema
from roost.engines.llm._client import redact, retry_after, translate
from roost.engines.llm._settings import Endpoint, ModelRef, make_settings, resolve_endpoint
from roost.errors import DefinitionError, MissingExtraError, RetryableError, TerminalError
from roost.runtime import RetryPolicy, State
from roost.testing import FakeModelServer, Reply


class Draft(BaseModel):
    title: str
    body: str


class Review(BaseModel):
    score: int
    notes: str = ""


class Page(BaseModel):
    reviews: list[Review]
    lead: Review | None = None


# -- model strings and settings ------------------------------------------------------------------


def test_model_strings() -> None:
    assert parse_model("openai/gpt-4o-mini") == ModelRef("openai", "gpt-4o-mini")
    assert parse_model("Ollama/llama3.2:1b") == ModelRef("ollama", "llama3.2:1b")
    assert parse_model("openrouter/meta-llama/llama-3-8b") == ModelRef("openrouter", "meta-llama/llama-3-8b")
    with pytest.raises(DefinitionError, match="is not 'provider/name'"):
        parse_model("gpt-4o-mini", agent="critic")
    with pytest.raises(DefinitionError, match="unknown model provider 'acme'.*compatible/<model>"):
        parse_model("acme/x")
    with pytest.raises(DefinitionError, match="not 'provider/name'"):
        parse_model("openai/")


def test_settings_are_checked_and_keys_hidden() -> None:
    with pytest.raises(DefinitionError, match="unknown .model\\(\\) setting\\(s\\) temprature; known: temperature"):
        make_settings("critic", {"temprature": 0.2})
    with pytest.raises(DefinitionError, match="temperature must be between 0 and 2"):
        make_settings("critic", {"temperature": 3})
    with pytest.raises(DefinitionError, match="max_turns must be >= 1"):
        make_settings("critic", {"max_turns": 0})
    s = make_settings("critic", {"api_key": "sk-hidden-123456", "max_tokens": 10})
    assert "sk-hidden" not in repr(s) and "sk-hidden" not in str(s.api_key)
    a = agent("critic").contracts(input=Draft, output=Review).model("openai/m", api_key="sk-hidden-123456")
    assert "sk-hidden" not in repr(a.engine_impl)


def test_endpoint_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    ref = parse_model("openai/gpt-4o-mini")
    plain = make_settings("a", {})

    def resolve(settings: Any = plain, r: ModelRef = ref, **env: str) -> Endpoint:
        return resolve_endpoint(r, settings, agent="a", environ=env)

    with pytest.raises(TerminalError, match="needs an API key: set ROOST_LLM_API_KEY or OPENAI_API_KEY"):
        resolve()
    e = resolve(OPENAI_API_KEY="k1")
    assert (e.base_url, e.api_key, e.timeout, e.max_concurrency) == ("https://api.openai.com/v1", "k1", 60.0, 8)
    assert resolve(OPENAI_API_KEY="k1", ROOST_LLM_API_KEY="k2").api_key == "k2"
    assert resolve(make_settings("a", {"api_key_env": "MINE"}), MINE="k3", ROOST_LLM_API_KEY="k2").api_key == "k3"
    assert resolve(make_settings("a", {"api_key": "k4"}), ROOST_LLM_API_KEY="k2").api_key == "k4"
    # Another endpoint needs no key (local servers); the client still gets a placeholder.
    e = resolve(OPENAI_BASE_URL="http://127.0.0.1:9/v1/")
    assert e.base_url == "http://127.0.0.1:9/v1" and e.api_key == "not-needed"
    assert resolve(ROOST_LLM_BASE_URL="http://a/v1", OPENAI_BASE_URL="http://b/v1").base_url == "http://a/v1"
    assert resolve(make_settings("a", {"base_url": "http://c/v1"}), ROOST_LLM_BASE_URL="http://a/v1").base_url \
        == "http://c/v1"
    assert resolve(r=parse_model("ollama/llama3")).base_url == "http://127.0.0.1:11434/v1"
    with pytest.raises(TerminalError, match="needs a base URL"):
        resolve(r=parse_model("compatible/x"))
    assert resolve(make_settings("a", {"timeout": 5, "max_concurrency": 2}), OPENAI_API_KEY="k").timeout == 5


def test_endpoint_from_pyproject(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.roost.llm]\nbase_url = "http://cfg/v1"\napi_key_env = "CFG_KEY"\ntimeout = 12\nmax_concurrency = 3\n'
        '[tool.roost.env.staging.llm]\nbase_url = "http://staging/v1"\n'
    )
    monkeypatch.chdir(tmp_path)
    ref, s = parse_model("compatible/x"), make_settings("a", {})
    e = resolve_endpoint(ref, s, agent="a", environ={"CFG_KEY": "ck"})
    assert (e.base_url, e.api_key, e.timeout, e.max_concurrency) == ("http://cfg/v1", "ck", 12.0, 3)
    assert resolve_endpoint(ref, s, agent="a", environ={"ROOST_ENV": "staging"}).base_url == "http://staging/v1"


# -- output schema ---------------------------------------------------------------------------------


def test_output_schema_for_models_and_wrapped_types() -> None:
    out = OutputSchema.of(Review, agent="a")
    assert not out.wrapped and out.schema["properties"].keys() == {"score", "notes"}
    fmt = out.response_format(strict=False)
    assert fmt == {"type": "json_schema", "json_schema": {"name": "Review", "schema": out.schema}}
    assert out.parse('{"score": 3}') == Review(score=3)
    assert out.parse('```json\n{"score": 4, "notes": "n"}\n```') == Review(score=4, notes="n")

    many = OutputSchema.of(list[Review], agent="a")
    assert many.wrapped and many.name == "list_Review"
    assert many.schema["required"] == ["value"]
    assert many.parse('{"value": [{"score": 1}]}') == [Review(score=1)]
    assert OutputSchema.of(int, agent="a").parse('{"value": 7}') == 7


def test_output_modes() -> None:
    out = OutputSchema.of(Review, agent="a")
    assert out.response_format(strict=False, mode="json_object") == {"type": "json_object", "schema": out.schema}
    assert out.response_format(strict=False, mode="prompt") is None
    assert '"score"' in out.instruction(with_schema=True) and '"score"' not in out.instruction()
    with pytest.raises(DefinitionError, match="output_mode must be one of json_schema, json_object, prompt"):
        make_settings("a", {"output_mode": "xml"})


def test_strict_schema_closes_objects_and_requires_every_property() -> None:
    schema = OutputSchema.of(Page, agent="a").schema
    strict = strict_schema(schema)
    assert schema["required"] == ["reviews"], "the original is left alone"
    assert strict["additionalProperties"] is False and strict["required"] == ["reviews", "lead"]
    review = strict["$defs"]["Review"]
    assert review["additionalProperties"] is False and review["required"] == ["score", "notes"]
    assert "default" not in json.dumps(strict)
    fmt = OutputSchema.of(Page, agent="a").response_format(strict=True)
    assert fmt["json_schema"]["strict"] is True


# -- tools ----------------------------------------------------------------------------------------


def test_tool_schema_comes_from_type_hints() -> None:
    @tool
    def search(query: Annotated[str, Field(description="what to look for")], limit: int = 5,
               json: bool = False) -> list[str]:
        """Search the archive."""
        return [query] * limit

    assert isinstance(search, Tool) and search("x", limit=2) == ["x", "x"]
    spec = search.spec()
    fn = spec["function"]
    assert spec["type"] == "function" and fn["name"] == "search" and fn["description"] == "Search the archive."
    props = fn["parameters"]["properties"]
    assert props["query"]["description"] == "what to look for" and props["limit"]["default"] == 5
    assert "json" in props and fn["parameters"]["required"] == ["query"]
    assert fn["parameters"]["additionalProperties"] is False
    assert search.validate({"query": "q", "json": True}) == {"query": "q", "limit": 5, "json": True}
    strict = search.spec(strict=True)["function"]
    assert strict["strict"] is True and strict["parameters"]["required"] == ["query", "limit", "json"]

    @tool(name="find-review", description="Find one.")
    async def find(review: Review) -> Review:
        return review

    assert find.name == "find-review" and find.spec()["function"]["description"] == "Find one."
    assert find.parameters["properties"]["review"]["$ref"].endswith("Review")
    assert asyncio.run(find.invoke({"review": {"score": 2}})) == '{"score":2,"notes":""}'
    assert asyncio.run(search.invoke({"query": "q", "limit": 1})) == '["q"]'


def test_tool_definition_errors() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> int:
        return 0

    with pytest.raises(DefinitionError, match="parameter 'x' has no type hint"):
        tool(untyped)
    with pytest.raises(DefinitionError, match="parameter 'args' is variadic positional"):
        tool(star)
    with pytest.raises(DefinitionError, match="tool name 'a b' is not valid"):
        tool(name="a b")(star)


def test_tool_argument_validation_errors() -> None:
    def multiply(a: int, b: int) -> int:
        return a * b

    t = Tool(multiply)
    with pytest.raises(Exception, match="valid integer"):
        t.validate({"a": "two", "b": 1})
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        t.validate({"a": 1, "b": 1, "c": 3})


def test_agent_tool_wiring() -> None:
    def f(x: int) -> int:
        return x

    def g(y: int) -> int:
        return y

    before = agent("a").contracts(input=Draft, output=Review).with_tools(f).model("openai/m").with_tools(g)
    engine = before.engine_impl
    assert isinstance(engine, LLMEngine) and list(engine.tools) == ["f", "g"]
    with pytest.raises(DefinitionError, match="two tools are named 'f'"):
        agent("b").with_tools(f, f)
    with pytest.raises(DefinitionError, match="with_tools\\(\\) needs a model engine"):
        agent("c").engine(lambda d: d).with_tools(f)
    with pytest.raises(DefinitionError, match="only a model engine can call"):
        agent("d").with_tools(f).engine(lambda d: d)


def test_an_llm_engine_serves_one_agent() -> None:
    a = agent("a").contracts(input=Draft, output=Review).model("openai/m")
    assert a.engine_impl is not None
    b = agent("b").contracts(input=Review, output=Review).engine(a.engine_impl).reacts_to(a)
    with pytest.raises(DefinitionError, match="agent 'b' uses the LLM engine of agent 'a'"):
        App([a, b])


def test_render_inputs() -> None:
    text = render_inputs((Draft(title="t", body="b"), Review(score=1)))
    assert text.startswith("Draft:\n{") and "\n\nReview:\n{" in text and '"score": 1' in text
    assert render_inputs(([Review(score=2)],)).startswith("list[Review]:\n[")
    assert render_inputs(("plain text",)) == "str:\nplain text"


# -- steps: bound methods of the engine, plain JSON in and out --------------------------------------


class RecordingContext(DurableContext):
    """Runs steps at once and records what the engine passed (what a backend would serialize)."""

    def __init__(self) -> None:
        self.run_id, self.agent, self.activation_id, self.caused_by = "run-1", "critic", "act-1", None
        self.steps: list[tuple[str, Any, tuple[Any, ...]]] = []

    @property
    def state(self) -> State:
        raise NotImplementedError

    async def step(self, name: str, fn: Callable[..., Any] | Callable[..., Awaitable[Any]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> Any:
        assert not kwargs
        self.steps.append((name, fn, args))
        wire = json.loads(json.dumps(args))  # what another process would receive
        result = await fn(*wire)
        return json.loads(json.dumps(result))

    async def sleep(self, duration: float | timedelta) -> None:
        raise NotImplementedError

    async def promise(self, name: str) -> Any:
        raise NotImplementedError

    async def now(self) -> datetime:
        raise NotImplementedError

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        raise NotImplementedError

    async def call(self, agent: str, payload: Any) -> Any:
        raise NotImplementedError


def test_engine_steps_are_bound_methods_with_json_arguments() -> None:
    def lookup(name: str) -> dict[str, str]:
        return {"name": name}

    with FakeModelServer() as server:
        server.script("m", Reply.tool_call("lookup", name="x"), Reply.answer(Review(score=1, notes="n")))
        a = agent("critic").contracts(input=Draft, output=Review).with_tools(lookup).model(
            "openai/m", base_url=server.base_url)
        spec = CompiledApp("t", [a], 10).specs["critic"]
        ctx = RecordingContext()
        out = asyncio.run(spec.engine.run(ctx, spec, (Draft(title="t", body="b"),)))
    assert out == Review(score=1, notes="n")
    assert [name for name, _, _ in ctx.steps] == ["model call 1", "tool lookup", "model call 2"]
    for _, fn, args in ctx.steps:
        assert fn.__self__ is spec.engine and fn.__name__ in ("complete", "call_tool")
        assert json.loads(json.dumps(args)) == list(args)
    assert ctx.steps[1][2] == ("lookup", {"name": "x"})


# -- provider errors ---------------------------------------------------------------------------------


def _http() -> Any:
    try:
        import httpx2 as http
    except ImportError:  # older openai SDKs use httpx
        import httpx as http  # type: ignore[no-redef]
    return http


def _status_error(status: int, message: str, headers: dict[str, str] | None = None) -> Exception:
    import openai

    http = _http()
    request = http.Request("POST", "http://x/v1/chat/completions")
    response = http.Response(status, headers=headers or {}, request=request)
    body = {"error": {"message": message}}
    cls = {400: openai.BadRequestError, 401: openai.AuthenticationError, 429: openai.RateLimitError}.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=body)  # type: ignore[no-any-return]


ENDPOINT = Endpoint("http://x/v1", "sk-secret-key-000", 3.0, 8)


def test_provider_errors_are_translated() -> None:
    import openai

    err = translate(_status_error(429, "slow down", {"retry-after": "2"}), model="openai/m", endpoint=ENDPOINT)
    assert isinstance(err, RetryableError) and err.retry_after == 2.0 and "HTTP 429: slow down" in str(err)
    err = translate(_status_error(503, "busy", {"retry-after-ms": "250"}), model="openai/m", endpoint=ENDPOINT)
    assert isinstance(err, RetryableError) and err.retry_after == 0.25
    err = translate(_status_error(500, "boom"), model="openai/m", endpoint=ENDPOINT)
    assert isinstance(err, RetryableError) and err.retry_after is None
    err = translate(_status_error(400, "bad temperature"), model="openai/m", endpoint=ENDPOINT)
    assert isinstance(err, TerminalError) and str(err) == "model 'openai/m' at http://x/v1: HTTP 400: bad temperature"
    err = translate(_status_error(401, "Incorrect API key provided: sk-secret-key-000"), model="openai/m",
                    endpoint=ENDPOINT)
    assert isinstance(err, TerminalError) and "sk-secret" not in str(err) and "***" in str(err)
    timeout = openai.APITimeoutError(_http().Request("POST", "http://x/v1/chat/completions"))
    err = translate(timeout, model="openai/m", endpoint=ENDPOINT)
    assert isinstance(err, RetryableError) and "within 3 s" in str(err)
    other = ValueError("not the SDK's")
    assert translate(other, model="openai/m", endpoint=ENDPOINT) is other


def test_retry_after_forms_and_redaction() -> None:
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None
    later = format_datetime(datetime.now().astimezone() + timedelta(seconds=30), usegmt=False)
    assert 25 < (retry_after({"retry-after": later}) or 0) <= 31
    assert redact("key sk-1234 here", Endpoint("http://x/v1", "sk-1234", 3.0, 1)) == "key *** here"
    assert retry_after({"retry-after": "inf"}) is None and retry_after({"retry-after-ms": "nan"}) is None


# -- the optional extra ---------------------------------------------------------------------------


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(MissingExtraError, match='pip install "roost\\[llm\\]"'):
        agent("a").contracts(input=Draft, output=Review).model("openai/m")


def test_core_import_does_not_need_openai() -> None:
    code = ("import sys; sys.modules['openai'] = None\n"
            "import roost, roost.testing\n"
            "from roost import tool\n"
            "@tool\n"
            "def f(x: int) -> int: return x\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- the scripted server ---------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_fake_server_scripts_logs_and_persists(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    with FakeModelServer(state_file=state) as server:
        server.script("m", Reply.answer({"a": 1}), Reply.tool_calls(("f", {"x": 1}), ("g", "{bad")))
        status, body = _post(server.base_url, {"model": "m", "messages": []})
        assert status == 200 and body["choices"][0]["message"]["content"] == '{"a":1}'
        assert body["choices"][0]["finish_reason"] == "stop"
    with FakeModelServer(state_file=state) as again:  # another process would do the same
        again.script("m", Reply.answer({"a": 1}), Reply.tool_calls(("f", {"x": 1}), ("g", "{bad")))
        assert again.remaining("m") == 1 and len(again.requests()) == 1
        status, body = _post(again.base_url, {"model": "m", "messages": [{"role": "user", "content": "2"}]})
        calls = body["choices"][0]["message"]["tool_calls"]
        assert [c["function"]["arguments"] for c in calls] == ['{"x": 1}', "{bad"]
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        status, body = _post(again.base_url, {"model": "m", "messages": []})
        assert status == 400 and "no scripted reply left for model 'm'" in body["error"]["message"]
        status, body = _post(again.base_url, {"model": "other", "messages": []})
        assert status == 400
        assert [r["model"] for r in again.requests()] == ["m", "m", "m", "other"]
        assert len(again.requests("m")) == 3
    assert len(json.loads(state.read_text())["requests"]) == 4


def test_fake_server_errors_keys_and_responders() -> None:
    with FakeModelServer(api_key="sk-right") as server:
        server.script("m", Reply.error(429, "slow", retry_after=3))
        server.always("m", lambda body: Reply.answer({"n": len(body["messages"])}))
        status, body = _post(server.base_url, {"model": "m", "messages": []}, key="sk-wrong")
        assert status == 401 and "sk-wrong" in body["error"]["message"]
        status, body = _post(server.base_url, {"model": "m", "messages": []}, key="sk-right")
        assert status == 429 and body["error"]["message"] == "slow"
        status, body = _post(server.base_url, {"model": "m", "messages": [{}, {}]}, key="sk-right")
        assert status == 200 and json.loads(body["choices"][0]["message"]["content"]) == {"n": 2}


def test_answers_with_raw_newlines_in_strings_are_accepted_but_still_validated() -> None:
    import pydantic
    from pydantic import BaseModel

    from roost.engines.llm._schema import OutputSchema

    class Note(BaseModel):
        text: str
        n: int

    schema = OutputSchema.of(Note, agent="a")
    assert schema.parse('{"text": "line one\nline two", "n": 2}') == Note(text="line one\nline two", n=2)
    with pytest.raises(pydantic.ValidationError, match="n"):
        schema.parse('{"text": "a\nb"}')


def test_an_answer_that_is_not_json_keeps_the_validation_error() -> None:
    import pydantic
    from pydantic import BaseModel

    from roost.engines.llm._schema import OutputSchema

    class Note(BaseModel):
        text: str

    with pytest.raises(pydantic.ValidationError, match="Invalid JSON"):
        OutputSchema.of(Note, agent="a").parse('{"text": ')
