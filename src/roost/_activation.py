"""One activation: an agent's engine run on its inputs, with contracts checked.

``perform`` is what every runtime calls: the run engine (``roost._engine``) decides what
runs, this runs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core

from ._codec import adapter, dumps, list_item_type, revive, type_name
from ._engine import Activation, ActivationFinished, Reply, failed_activation
from ._engine import entity_key as batch_entity_key
from ._graph import AgentSpec, CompiledApp
from .errors import CallFailedError, ContractViolationError, StepFailedError, TerminalError
from .runtime._base import DurableContext, RunAborted
from .runtime._branches import internal, root


def message_body(app: CompiledApp, ctx: DurableContext, agent: str, payload: Any) -> Any:
    """The JSON body ``ctx.send``/``ctx.call`` sends to ``agent``, checked against its contract."""
    spec = app.specs.get(agent)
    if spec is None:
        raise TerminalError(f"run {ctx.run_id!r}: agent {ctx.agent!r} sent a message to unknown agent {agent!r}")
    if spec.kind != "single":
        raise TerminalError(f"run {ctx.run_id!r}: agent {agent!r} converges inputs and cannot be sent messages")
    check_input(spec, spec.input_type, payload, source=ctx.agent, run_id=ctx.run_id)
    return json.loads(dumps(payload, what=f"message from {ctx.agent!r} to {agent!r}"))


def call_reply(app: CompiledApp, ctx: DurableContext, callee: str, reply: Reply) -> Any:
    """What ``ctx.call`` returns for the callee's ``reply``: its output, revived to its contract;
    a cancelled callee aborts the caller; any other end is a ``CallFailedError`` naming it."""
    if reply.status == "cancelled":
        raise RunAborted()
    if reply.status != "completed":
        cause = f": {reply.error.error_type}: {reply.error.error_message}" if reply.error else ""
        raise CallFailedError(f"run {ctx.run_id!r}: ctx.call from {ctx.agent!r} to {callee!r}: the callee was "
                              f"{reply.status}{cause}", run_id=ctx.run_id, callee=callee, status=reply.status)
    with internal():
        return revive(reply.output, app.specs[callee].output_type)


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


def _source_of(spec: AgentSpec, slot: int) -> str:
    return next(name for name, i in spec.slots.items() if i == slot)


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


def shared_entity(app: CompiledApp, spec: Activation) -> bool:
    """Whether the activation's entity is shared by runs (``keyed_by``), not one of its run's own."""
    return app.specs[spec.agent].key_fn is not None and spec.kind not in ("converge", "gather")


def key_of(app: CompiledApp, spec: Activation, run_id: str) -> str:
    """The entity an activation runs as: ``keyed_by(input)``, else the run and its batch path."""
    if not shared_entity(app, spec):
        return batch_entity_key(run_id, spec.batch)
    return _keyed(app.specs[spec.agent], spec.args[0], run_id)


async def perform(app: CompiledApp, ctx: DurableContext, spec: Activation) -> Any:
    """Run one activation's engine on its inputs; returns its output as JSON (raises on failure).

    What happens next (routing, approval, gathering) is the run engine's business."""
    agent = app.specs[spec.agent]
    raw = await agent.engine.run(ctx, agent, inputs(app, spec, ctx.run_id))
    return check_output(agent, raw, ctx.run_id)[1]


def _never(exc: BaseException) -> bool:
    return False


async def outcome_of(app: CompiledApp, ctx: DurableContext, spec: Activation,
                     passes: Callable[[BaseException], bool] = _never) -> ActivationFinished:
    """``perform`` the activation as the root of its branches; whatever ends it becomes its
    outcome: aborted, it is ``cancelled``; any failure is a failed activation naming run, agent,
    step and cause. Only what ends the process or the runtime's own work goes through: an
    interrupt, the cancellation of the task itself (the runtime is closing), and what ``passes``
    says (Restate's signal that the invocation is suspending)."""
    try:
        with root(ctx):
            output = await perform(app, ctx, spec)
        return ActivationFinished(spec.id, "completed", output)
    except RunAborted:
        return ActivationFinished(spec.id, "cancelled")
    except StepFailedError as exc:
        return failed_activation(spec, exc.step, exc.attempts, exc.cause)
    except (KeyboardInterrupt, SystemExit):
        raise
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the runtime is closing, or the invocation ending: the activation stays unfinished
        return failed_activation(spec, None, 1, exc)
    except BaseException as exc:  # outside any step: the agent's code ran once
        if passes(exc):
            raise
        return failed_activation(spec, None, 1, exc)
