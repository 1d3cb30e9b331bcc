"""One activation: an agent's engine run on its inputs, with contracts checked.

``perform`` is what runtimes on the run engine (``roost._engine``) call: the engine decides
what runs, this runs it. ``execute`` and the message helpers below are the older path, where
the activation also collected converge/gather inputs in entity state, waited for approval and
routed its output; the Temporal runtime still uses it until it moves onto the run engine
(issue 11).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
import pydantic_core

from ._codec import adapter, dumps, list_item_type, type_name
from ._engine import Activation, is_approved
from ._engine import entity_key as batch_entity_key
from ._graph import AgentSpec, CompiledApp, Route, entity_key, message_id
from .errors import ContractViolationError, TerminalError
from .runtime._base import DurableContext

Status = Literal["completed", "rejected", "absorbed"]
_CONVERGE = "__roost.converge"
_GATHER = "__roost.gather"
_APPROVALS = "__roost.approvals"


@dataclass
class Message:
    """A message that activates ``target`` in run ``run_id``; its id is the activation id."""

    id: str
    run_id: str
    target: str
    kind: str  # entry | edge | contribution | send | call
    payload: Any
    cause: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    deliver_at: float | None = None


@dataclass
class Outcome:
    status: Status
    output: Any = None
    output_json: Any = None
    routes: list[Route] = field(default_factory=list)


def message_body(app: CompiledApp, ctx: DurableContext, agent: str, payload: Any) -> Any:
    """The JSON body ``ctx.send``/``ctx.call`` sends to ``agent``, checked against its contract."""
    spec = app.specs.get(agent)
    if spec is None:
        raise TerminalError(f"run {ctx.run_id!r}: agent {ctx.agent!r} sent a message to unknown agent {agent!r}")
    if spec.kind != "single":
        raise TerminalError(f"run {ctx.run_id!r}: agent {agent!r} converges inputs and cannot be sent messages")
    check_input(spec, spec.input_type, payload, source=ctx.agent, run_id=ctx.run_id)
    return json.loads(dumps(payload, what=f"message from {ctx.agent!r} to {agent!r}"))


def outgoing(app: CompiledApp, ctx: DurableContext, agent: str, payload: Any, *, kind: str, position: int,
             meta: dict[str, Any] | None = None, deliver_at: float | None = None) -> Message:
    """The message ``ctx.send``/``ctx.call`` sends, checked against the receiver's contract."""
    body = message_body(app, ctx, agent, payload)
    return Message(message_id(agent, ctx.activation_id, kind, position), ctx.run_id, agent, kind, body,
                   ctx.activation_id, {"from": ctx.agent, **(meta or {})}, deliver_at)


def entity_of(app: CompiledApp, msg: Message) -> str:
    """The entity (state and one-at-a-time execution) a message is delivered to."""
    spec = app.specs[msg.target]
    if spec.key_fn is None or msg.kind == "contribution":
        return entity_key(msg.run_id, msg.meta)
    return _keyed(spec, msg.payload, msg.run_id)


def _keyed(spec: AgentSpec, payload: Any, run_id: str) -> str:
    """``keyed_by(input)`` of a keyed agent; a failing key function is a TerminalError naming it."""
    assert spec.key_fn is not None
    try:
        return str(spec.key_fn(adapter(spec.input_type).validate_python(payload)))
    except Exception as exc:
        raise TerminalError(f"run {run_id!r}: the keyed_by function of agent {spec.name!r} failed on its input: "
                            f"{type(exc).__name__}: {exc}") from exc


def _field_errors(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '(value)'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def check_input(spec: AgentSpec, tp: Any, payload: Any, *, source: str | None, run_id: str) -> Any:
    try:
        return adapter(tp).validate_python(payload)
    except pydantic.ValidationError as exc:
        origin = f"the output of {source!r}" if source else "its input"
        raise ContractViolationError(
            f"run {run_id!r}: agent {spec.name!r} cannot accept {origin} as {type_name(tp)}: {_field_errors(exc)}"
        ) from None


def check_output(spec: AgentSpec, value: Any, run_id: str) -> tuple[Any, Any]:
    """The output as the contract's type, and its JSON-able form."""
    try:
        typed = adapter(spec.output_type).validate_python(value)
    except pydantic.ValidationError as exc:
        raise ContractViolationError(
            f"run {run_id!r}: agent {spec.name!r} produced output that does not fit its contract "
            f"{type_name(spec.output_type)}: {_field_errors(exc)}"
        ) from None
    return typed, pydantic_core.to_jsonable_python(typed)


async def _collect(ctx: DurableContext, spec: AgentSpec, msg: Message) -> tuple[Any, ...] | None:
    """Store one contribution; return the engine's arguments once they are all in."""
    if spec.kind == "converge":
        got: dict[str, Any] = await ctx.state.get(_CONVERGE) or {"fired": False, "slots": {}}
        slot = str(msg.meta["slot"])
        if got["fired"] or slot in got["slots"]:
            return None  # converge fires once per run; later values are ignored
        got["slots"][slot] = msg.payload
        done = len(got["slots"]) == spec.arity
        got["fired"] = done
        ctx.state.set(_CONVERGE, got)
        if not done:
            return None
        return tuple(
            check_input(spec, spec.slot_type(i), got["slots"][str(i)], source=_source_of(spec, i), run_id=ctx.run_id)
            for i in range(spec.arity)
        )
    gathered: dict[str, Any] = await ctx.state.get(_GATHER) or {"items": {}}
    gathered["items"][str(msg.meta["index"])] = None if msg.meta.get("skip") else msg.payload
    total = int(msg.meta["total"])
    if len(gathered["items"]) < total:
        ctx.state.set(_GATHER, gathered)
        return None
    ctx.state.clear(_GATHER)
    items = [gathered["items"][str(i)] for i in range(total)]
    item_t = list_item_type(spec.input_type)
    return ([check_input(spec, item_t, v, source=msg.meta.get("from"), run_id=ctx.run_id) for v in items if v is not None],)


def _source_of(spec: AgentSpec, slot: int) -> str:
    return next(name for name, i in spec.slots.items() if i == slot)


async def approval_name(ctx: DurableContext, spec: AgentSpec, key: str) -> str:
    """The promise an approval waits on: the agent's name for its first activation in a run."""
    n = int(await ctx.state.get(_APPROVALS) or 0) + 1
    ctx.state.set(_APPROVALS, n)
    name = spec.name if key == ctx.run_id else f"{spec.name}[{key[len(ctx.run_id) + 1:]}]"
    return name if n == 1 else f"{name}#{n}"


def inputs(app: CompiledApp, spec: Activation, run_id: str) -> tuple[Any, ...]:
    """An activation's arguments, validated against the agent's input contract."""
    agent = app.specs[spec.agent]
    source = spec.cause.split(":")[0] if spec.cause else None
    if spec.kind == "converge":
        return tuple(check_input(agent, agent.slot_type(i), v, source=_source_of(agent, i), run_id=run_id)
                     for i, v in enumerate(spec.args))
    if spec.kind == "gather":
        item_t = list_item_type(agent.input_type)
        return ([check_input(agent, item_t, v, source=source, run_id=run_id) for v in spec.args[0]],)
    return (check_input(agent, agent.input_type, spec.args[0], source=source, run_id=run_id),)


def key_of(app: CompiledApp, spec: Activation, run_id: str) -> str:
    """The entity an activation runs as: ``keyed_by(input)``, else the run and its batch path."""
    agent = app.specs[spec.agent]
    if agent.key_fn is None or spec.kind in ("converge", "gather"):
        return batch_entity_key(run_id, spec.batch)
    return _keyed(agent, spec.args[0], run_id)


async def perform(app: CompiledApp, ctx: DurableContext, spec: Activation) -> Any:
    """Run one activation's engine on its inputs; returns its output as JSON (raises on failure).

    What happens next (routing, approval, gathering) is the run engine's business."""
    agent = app.specs[spec.agent]
    raw = await agent.engine.run(ctx, agent, inputs(app, spec, ctx.run_id))
    return check_output(agent, raw, ctx.run_id)[1]


async def execute(app: CompiledApp, ctx: DurableContext, msg: Message, key: str) -> Outcome:
    """Run one activation to its outcome (raises on failure; the runtime records it)."""
    spec = app.specs[msg.target]
    if msg.kind == "contribution":
        args = await _collect(ctx, spec, msg)
        if args is None:
            return Outcome("absorbed")
    else:
        tp = spec.input_type
        args = (check_input(spec, tp, msg.payload, source=msg.meta.get("from"), run_id=ctx.run_id),)
    raw = await spec.engine.run(ctx, spec, args)
    output, output_json = check_output(spec, raw, ctx.run_id)
    meta = {**msg.meta, "_activation": msg.id}
    if spec.approval and not is_approved(await ctx.promise(await approval_name(ctx, spec, key))):
        return Outcome("rejected", output, output_json, _routes(app, spec, output, meta, ctx.run_id, rejected=True))
    return Outcome("completed", output, output_json, _routes(app, spec, output, meta, ctx.run_id))


def _routes(app: CompiledApp, spec: AgentSpec, output: Any, meta: dict[str, Any], run_id: str, *, rejected: bool = False) -> list[Route]:
    try:
        routes = app.routes(spec.name, output, meta, rejected=rejected)
    except Exception as exc:  # a user's when= or map= function failed
        raise TerminalError(
            f"run {run_id!r}: a when= or map= function on an edge from agent {spec.name!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for r in routes:
        if r.payload is not None and not isinstance(r.payload, (dict, list, str, int, float, bool)):
            object.__setattr__(r, "payload", pydantic_core.to_jsonable_python(r.payload))
    return routes
