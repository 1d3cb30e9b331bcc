"""End to end against a real small model (SmolLM2-135M on llama_cpp.server, see conftest.py).

A 135M model writes nonsense, so these tests check shape and validity (types, run status, the
run record), never content. Tool calling is not tested here: llama_cpp.server's chat handlers
mishandle tools; the scripted server covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from roost import App, agent
from roost.result import RunRecord, StepRecord

from .conftest import ModelServer

# Generous limits: llama.cpp slows down a lot when other processes compete for the CPU.
pytestmark = [pytest.mark.llm_real, pytest.mark.timeout(600)]

MAX_TOKENS = 256
REQUEST_TIMEOUT = 180.0  # seconds per model request


class Topic(BaseModel):
    subject: str


# Small schemas with bounded strings, so that a rambling model still closes its JSON within
# MAX_TOKENS. The pattern also keeps raw control characters out: llama-cpp-python 0.3.36's JSON
# grammar lets a raw newline into a plain string, which is not JSON (the model does write one for
# some prompts, again on every retry at temperature 0); a string with a pattern gets its own rule.
Text = Annotated[str, Field(pattern=r"^[A-Za-z0-9 ,.!?'-]{1,60}$")]


class Outline(BaseModel):
    title: Text
    points: list[Text] = Field(min_length=1, max_length=3)
    sections: int


class Rating(BaseModel):
    score: int
    comment: Text


def test_server_answers_json_schema_through_the_openai_sdk(model_server: ModelServer) -> None:
    """The fixture on its own: OpenAI-style structured output straight through the openai SDK."""
    from openai import OpenAI

    before = len(model_server.chat_requests())
    with OpenAI(base_url=model_server.base_url, api_key="not-needed", max_retries=0, timeout=REQUEST_TIMEOUT) as client:
        resp = client.chat.completions.create(
            model=model_server.model,
            messages=[
                {"role": "system", "content": "You write outlines as JSON."},
                {"role": "user", "content": "Outline an article about durable agents."},
            ],
            response_format={"type": "json_schema", "json_schema": {"name": "Outline", "schema": Outline.model_json_schema()}},
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice
    outline = Outline.model_validate_json(choice.message.content or "")
    assert isinstance(outline.title, str) and isinstance(outline.sections, int)
    assert 1 <= len(outline.points) <= 3 and all(isinstance(p, str) for p in outline.points)
    assert len(model_server.chat_requests()) == before + 1


# -- through roost's LLM engine -------------------------------------------------------------------


def build_app(server: ModelServer, journal: Path, output_mode: str = "json_object") -> App:
    """planner (Topic -> Outline) then rater (Outline -> Rating), both on the real model.

    ``json_object`` is how llama_cpp.server takes a schema; ``json_schema`` (roost's default,
    OpenAI's spelling) reaches it through the proxy's translation (see conftest.py)."""
    settings = {"base_url": server.base_url, "max_tokens": MAX_TOKENS, "temperature": 0, "output_mode": output_mode,
                "timeout": REQUEST_TIMEOUT}
    planner = agent("planner").contracts(input=Topic, output=Outline).model(
        f"openai/{server.model}", system="You plan short articles.", **settings)
    rater = agent("rater").contracts(input=Outline, output=Rating).model(
        f"openai/{server.model}", system="You rate article outlines from 1 to 10.", **settings)
    rater.reacts_to(planner)
    return App([planner, rater], name="llm-real", journal=journal)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The openai SDK wants a key; the local server ignores it."""
    monkeypatch.setenv("OPENAI_API_KEY", "not-needed")


def model_calls(record: RunRecord, name: str) -> list[StepRecord]:
    (activation,) = [a for a in record.activations if a.agent == name]
    assert activation.status == "completed", activation
    return [s for s in activation.steps if s.kind == "step" and s.name.startswith("model call")]


def sent_schema(request: dict[str, Any]) -> dict[str, Any]:
    fmt = request["response_format"]
    schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]
    assert isinstance(schema, dict)
    return schema


@pytest.mark.usefixtures("api_key")
@pytest.mark.parametrize("output_mode", ["json_object", "json_schema"])
def test_two_agent_pipeline_with_structured_output(model_server: ModelServer, tmp_path: Path, output_mode: str) -> None:
    app = build_app(model_server, tmp_path / "journal.db", output_mode)
    before = len(model_server.chat_requests())

    result = app.run(Topic(subject="durable agents"), run_id=f"real-pipeline-{output_mode}")

    assert result.status == "completed"
    outline, rating = result["planner"], result["rater"]
    assert isinstance(outline, Outline) and isinstance(rating, Rating)
    assert isinstance(outline.title, str) and isinstance(outline.sections, int)
    assert 1 <= len(outline.points) <= 3 and all(isinstance(p, str) for p in outline.points)
    assert isinstance(rating.score, int) and isinstance(rating.comment, str)

    # The record has each agent's model calls as durable steps (more than one per agent only if an
    # answer did not fit and was asked again), and every request the server got is an attempt of one.
    planner_calls, rater_calls = model_calls(result.record, "planner"), model_calls(result.record, "rater")
    assert planner_calls and rater_calls
    assert all(s.status == "done" and s.attempts >= 1 for s in planner_calls + rater_calls)
    sent = model_server.chat_requests()[before:]
    assert len(sent) == sum(s.attempts for s in planner_calls + rater_calls)
    # roost asked for structured output of each agent's output contract, in the chosen spelling.
    assert {r["response_format"]["type"] for r in sent} == {output_mode}
    assert {tuple(sorted(sent_schema(r)["properties"])) for r in sent} == {
        ("points", "sections", "title"), ("comment", "score")}
    assert all(r["model"] == model_server.model and r["temperature"] == 0 for r in sent)


@pytest.mark.usefixtures("api_key")
def test_same_run_id_returns_the_recorded_result_without_asking_the_model(model_server: ModelServer,
                                                                          tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    topic = Topic(subject="crash-proof pipelines")
    app = build_app(model_server, journal)
    first = app.run(topic, run_id="real-once")
    assert first.status == "completed"
    asked = len(model_server.chat_requests())
    assert asked > 0

    # The same app, then a new App on the same journal (as after a restart): the recorded result.
    for again in (app.run(topic, run_id="real-once"), build_app(model_server, journal).run(topic, run_id="real-once")):
        assert len(model_server.chat_requests()) == asked, "the completed run asked the model again"
        assert again.status == "completed" and again.run_id == "real-once"
        assert again["planner"] == first["planner"] and again["rater"] == first["rater"]
        assert [(a.agent, len(a.steps)) for a in again.record.activations] == [
            (a.agent, len(a.steps)) for a in first.record.activations]
