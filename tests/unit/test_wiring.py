"""Wiring and validation: every DefinitionError names the agents and types involved."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from roost import App, DefinitionError, MockEngine, agent


class A(BaseModel):
    x: int


class B(BaseModel):
    y: str


class C(BaseModel):
    z: bool


def make(name: str, inp: object, out: object) -> object:
    return agent(name).contracts(input=inp, output=out).engine(MockEngine())


def test_readme_pipeline_builds_and_finds_entry_and_converge() -> None:
    w, c, e = make("writer", A, B), make("critic", B, C), make("editor", (B, C), A)
    c.reacts_to(w)
    e.reacts_to(w, c)
    app = App([w, c, e])
    assert [s.name for s in app.compiled.entries] == ["writer"]
    assert app.compiled.specs["editor"].kind == "converge"
    assert app.compiled.specs["editor"].slots == {"writer": 0, "critic": 1}


def test_duplicate_names() -> None:
    with pytest.raises(DefinitionError, match="two agents are named 'a'"):
        App([make("a", A, B), make("a", A, B)])


def test_reacts_to_agent_not_in_app() -> None:
    a, b = make("a", A, B), make("b", B, C)
    b.reacts_to(a)
    with pytest.raises(DefinitionError, match="'b' reacts to 'a', which is not in this App"):
        App([b])


def test_incompatible_contracts_name_agents_and_types() -> None:
    a, b = make("a", A, B), make("b", A, C)
    b.reacts_to(a)
    with pytest.raises(DefinitionError, match="'a' outputs B and 'b' accepts A"):
        App([a, b])


def test_map_with_annotation_is_checked_and_fixes_types() -> None:
    a, b = make("a", A, B), make("b", A, C)

    def to_a(v: B) -> A:
        return A(x=len(v.y))

    b.reacts_to(a, map=to_a)
    App([a, b])
    a2, b2 = make("a", A, B), make("b", A, C)

    def wrong(v: B) -> C:
        return C(z=True)

    b2.reacts_to(a2, map=wrong)
    with pytest.raises(DefinitionError, match="outputs C and 'b' accepts A"):
        App([a2, b2])


def test_converge_inputs_that_do_not_line_up() -> None:
    a, b = make("a", A, B), make("b", B, C)
    b.reacts_to(a)
    e = make("e", (B, A), C)
    e.reacts_to(a, b)
    with pytest.raises(DefinitionError, match="converge inputs do not line up: 'b' outputs C"):
        App([a, b, e])
    a2, b2 = make("a", A, B), make("b", B, C)
    b2.reacts_to(a2)
    e2 = make("e", (B, C, A), C)
    e2.reacts_to(a2, b2)
    with pytest.raises(DefinitionError, match="converges 2 agents .* has 3 entries"):
        App([a2, b2, e2])


def test_converge_needs_tuple_input_and_tuple_input_needs_converge() -> None:
    a, b = make("a", A, B), make("b", A, C)
    e = make("e", B, C)
    e.reacts_to(a, b)
    with pytest.raises(DefinitionError, match="its input contract must be a tuple"):
        App([a, b, e])
    a2 = make("a", A, B)
    e2 = make("e", (B, C), C)
    e2.reacts_to(a2)
    with pytest.raises(DefinitionError, match="must converge"):
        App([a2, e2])


def test_loop_heads_and_unreachable_agents() -> None:
    a, b, c = make("a", A, B), make("b", C, C), make("c", C, C)
    b.reacts_to(c, when=lambda v: True)
    c.reacts_to(b)
    # b and c form a guarded loop that nothing feeds: b becomes a loop head (an entry).
    app = App([a, b, c])
    assert {s.name for s in app.compiled.entries} == {"a", "b"}
    a2, b2, c2 = make("a", A, B), make("b", C, C), make("c", C, C)
    b2.reacts_to(c2, when=lambda v: True)
    c2.reacts_to(b2)
    with pytest.raises(DefinitionError, match="'b', 'c' can never run"):
        App([a2, b2, c2], entry=[a2])


def test_unguarded_loop_is_rejected() -> None:
    a, b = make("a", A, A), make("b", A, A)
    b.reacts_to(a)
    a.reacts_to(b)
    with pytest.raises(DefinitionError, match="loop with no when="):
        App([a, b], entry=[a])


def test_each_requires_list_output_and_list_outputs_need_each() -> None:
    a, b = make("a", A, B), make("b", B, C)
    b.reacts_to(a, each=True)
    with pytest.raises(DefinitionError, match="each=True, but 'a' outputs B, not a list"):
        App([a, b])
    a2, b2 = make("a", A, list[B]), make("b", B, C)
    b2.reacts_to(a2)
    with pytest.raises(DefinitionError, match="or each=True"):
        App([a2, b2])


def test_missing_contracts_or_engine_and_bad_names() -> None:
    with pytest.raises(DefinitionError, match="has no contracts"):
        App([agent("a").engine(MockEngine())])
    with pytest.raises(DefinitionError, match="has no engine"):
        App([agent("a").contracts(input=A, output=B)])
    with pytest.raises(DefinitionError, match="not valid"):
        agent("has space")
    with pytest.raises(DefinitionError, match="unknown"):
        agent("m").contracts(input=A, output=B).model("openai/gpt-4o-mini", temprature=0.2)


def test_engine_signature_and_sync_ctx_are_checked() -> None:
    def two(a: A, b: A) -> B:
        return B(y="")

    with pytest.raises(DefinitionError, match="must accept 1 positional input"):
        App([agent("a").contracts(input=A, output=B).engine(two)])

    def sync_ctx(a: A, ctx: object) -> B:
        return B(y="")

    with pytest.raises(DefinitionError, match="must be 'async def'"):
        agent("a").contracts(input=A, output=B).engine(sync_ctx)


def test_then_is_reacts_to_sugar() -> None:
    a, b, c = make("a", A, B), make("b", B, C), make("c", C, A)
    a.then(b).then(c)
    app = App([a, b, c])
    assert [(e.source, e.target) for e in app.compiled.edges] == [("a", "b"), ("b", "c")]
