"""Roost's orchestration as Temporal workflow code (users never write any).

``RunWorkflow`` serves every app: its type is ``roost.<app>`` (a dynamic workflow) and its id the
run id. It delivers messages to agents as workflow tasks in the run, runs the shared activation
logic (``roost._activation.execute``) for each, and routes outputs along ``reacts_to`` edges.
Entities scoped to the run keep their state here; entities ``keyed_by`` across runs live in an
``EntityWorkflow`` each, which hands its state to one activation at a time.

The code is deterministic given the history: message ids and order come from the app's wiring
and the journaled results; times are ``workflow.now()``. It runs outside Temporal's sandbox
(user modules are imported once, as ordinary Python); roost errors fail the workflow instead of
retrying its task for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from ..._activation import Message, Outcome, entity_of, execute
from ..._graph import CompiledApp, message_id
from ...errors import RoostError, StepFailedError, TerminalError
from .._base import RunAborted
from ._activities import find_app
from ._context import TemporalContext
from ._names import (
    ACQUIRE_SIGNAL,
    AWAIT_WAITING,
    ENTITY_WORKFLOW,
    GRANTED_SIGNAL,
    RECORD_QUERY,
    RELEASE_SIGNAL,
    RESOLVE,
    RESOLVE_SIGNAL,
    entity_workflow_id,
)


def _error(agent: str, step: str | None, attempts: int, exc: BaseException) -> dict[str, Any]:
    kind = getattr(exc, "kind", None) or type(exc).__name__
    return {"agent": agent, "step": step, "attempts": max(1, attempts), "error_type": kind, "error_message": str(exc)}


@dataclass
class _Entity:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: dict[str, Any] = field(default_factory=dict)


class _CallFailed(Exception):
    pass


@workflow.defn(dynamic=True, sandboxed=False)
class RunWorkflow:
    def __init__(self) -> None:
        # Update and signal handlers may run before main() (a resolution sent right after start).
        self.run: dict[str, Any] = {"error": None, "waiting": [], "promises": {}}
        self.promises: dict[str, Any] = {}
        self.entities: dict[str, _Entity] = {}
        self.grants: dict[str, dict[str, Any]] = {}
        self.started_entities: set[str] = set()
        self.pending = 0
        self.count = 0
        self.closed = False
        self.app: CompiledApp | None = None

    # -- the run -----------------------------------------------------------------------------

    @workflow.run
    async def main(self, args: Sequence[RawValue]) -> dict[str, Any]:
        sub: dict[str, Any] = workflow.payload_converter().from_payload(args[0].payload, dict)
        self.app = app = find_app(workflow.info().task_queue, sub["app"])
        self.run.update({k: v for k, v in sub.items() if k != "entries"})
        self.run.update(status="running", finished_at=None, activations={}, expected=[])
        for entry in sub["entries"]:
            msg = Message(f"{entry['agent']}:entry", self.run["run_id"], entry["agent"], "entry", entry["payload"])
            try:
                key = entity_of(app, msg)
            except TerminalError as exc:
                self._fail(_error(entry["agent"], None, 1, exc))
                continue
            self.deliver(msg, key)
        await workflow.wait_condition(lambda: self.pending == 0)
        self.closed = True
        await workflow.wait_condition(workflow.all_handlers_finished)  # await-waiting callers get []
        run = self.run
        run["status"] = "failed" if run["error"] else "completed"
        run["finished_at"] = max([a.get("finished") or 0 for a in run["activations"].values()] + [run["created_at"]])
        if run["error"]:
            err = run["error"]
            raise ApplicationError(f"run {run['run_id']!r} failed at agent {err['agent']!r}: {err['error_type']}: "
                                   f"{err['error_message']}", run, type=err["error_type"], non_retryable=True)
        return run

    def _fail(self, error: dict[str, Any]) -> None:
        if self.run["error"] is None:
            self.run["error"] = error

    @property
    def failed(self) -> bool:
        return self.run.get("error") is not None

    def deliver(self, msg: Message, key: str, delay: float | None = None) -> None:
        """Activate ``msg.target`` with ``msg`` (after ``delay`` seconds): a task of the workflow."""
        if msg.id not in self.run["expected"]:
            self.run["expected"].append(msg.id)
        self.pending += 1
        asyncio.get_running_loop().create_task(self._deliver(msg, key, delay))

    async def _deliver(self, msg: Message, key: str, delay: float | None) -> None:
        try:
            if delay:
                await workflow.sleep(delay)
            await self.activate(msg, key)
        except _CallFailed:
            pass
        finally:
            self.pending -= 1

    async def call(self, msg: Message, key: str, *, caller: str) -> Any:
        """Request/response: run the activation now and return its output (JSON)."""
        self.run["expected"].append(msg.id)
        try:
            outcome = await self.activate(msg, key)
        except _CallFailed as exc:
            raise TerminalError(f"run {msg.run_id!r}: call from {caller!r} to agent {msg.target!r} failed: {exc}") from None
        return outcome.output_json

    async def activate(self, msg: Message, key: str) -> Outcome:
        """One activation, start to finish, recorded in the run; raises _CallFailed if it failed."""
        assert self.app is not None
        app, agent = self.app, msg.target
        if self.failed and msg.kind != "call":
            self._report(msg, "cancelled", None, None, 0, None, None)
            return Outcome("absorbed")
        self.count += 1
        if self.count > self.run["max_activations"]:
            self._fail({
                "agent": agent, "step": None, "attempts": 1, "error_type": "ActivationLimitError",
                "error_message": f"run {msg.run_id!r} went past its limit of {self.run['max_activations']} activations "
                f"(at agent {agent!r}); a loop's when= condition never turned false? "
                "Raise App(max_activations=...) if the run really needs more"})
            self._report(msg, "cancelled", None, None, 0, None, None)
            return Outcome("absorbed")
        spec = app.specs[agent]
        cross_run = spec.key_fn is not None and msg.kind != "contribution"
        local = None if cross_run else self.entities.setdefault(f"{agent}/{key}", _Entity())
        if local is not None:
            await local.lock.acquire()
            state = local.state
        else:
            state = await self._acquire(agent, key, msg.id)
        ctx = TemporalContext(self, app, msg, key, state)
        started = workflow.now().timestamp()
        outcome, error = Outcome("absorbed"), None
        try:
            outcome = await execute(app, ctx, msg, key)
        except RunAborted:
            outcome = Outcome("absorbed")
        except StepFailedError as exc:
            error = _error(agent, exc.step, exc.attempts, exc.cause)
        except Exception as exc:  # a roost or user error: recorded, the run fails
            error = _error(agent, None, ctx.attempts, exc)
        finally:
            new_state = ctx.state.data if error is None else None
            if local is not None:
                if new_state is not None:
                    local.state = new_state
                local.lock.release()
            else:
                await self._release(agent, key, msg.id, new_state)
        routes = [] if (error or msg.kind == "call") else outcome.routes
        new = [Message(message_id(r.target, msg.id, r.id_suffix), msg.run_id, r.target, r.kind, r.payload, msg.id, r.meta)
               for r in routes]
        try:
            keyed = [(m, entity_of(app, m)) for m in new]
        except TerminalError as exc:  # a keyed_by function failed: nothing is sent
            error, keyed = _error(agent, None, ctx.attempts, exc), []
        status = "failed" if error else outcome.status
        if error:
            self._fail(error)
        finished = workflow.now().timestamp()
        self._report(msg, status, outcome.output_json, error, ctx.attempts, ctx.started or started,
                     ctx.finished or finished)
        if not self.failed:
            for m, k in keyed:
                self.deliver(m, k)
        if error is not None:
            raise _CallFailed(f"{error['error_type']}: {error['error_message']}")
        return outcome

    def _report(self, msg: Message, status: str, output: Any, error: dict[str, Any] | None, attempts: int,
                started: float | None, finished: float | None) -> None:
        run = self.run
        run["activations"][msg.id] = {
            "id": msg.id, "agent": msg.target, "kind": msg.kind, "status": status, "cause": msg.cause,
            "output": output, "error": error, "attempts": attempts, "started": started, "finished": finished,
            "seq": len(run["activations"]),  # payloads may reorder keys: this keeps the record's order
        }
        run["waiting"] = [w for w in run["waiting"] if w["activation"] != msg.id]

    # -- entities keyed across runs ------------------------------------------------------------

    async def _acquire(self, agent: str, key: str, activation: str) -> dict[str, Any]:
        assert self.app is not None
        eid = entity_workflow_id(self.app.name, agent, key)
        token = f"{self.run['run_id']}/{activation}"
        if eid not in self.started_entities:
            self.started_entities.add(eid)
            try:
                await workflow.start_child_workflow(
                    ENTITY_WORKFLOW, {"state": {}, "queue": []}, id=eid,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
            except WorkflowAlreadyStartedError:
                pass
        await workflow.get_external_workflow_handle(eid).signal(
            ACQUIRE_SIGNAL, {"workflow_id": workflow.info().workflow_id, "token": token})
        await workflow.wait_condition(lambda: token in self.grants)
        return self.grants.pop(token)["state"]  # type: ignore[no-any-return]

    async def _release(self, agent: str, key: str, activation: str, state: dict[str, Any] | None) -> None:
        assert self.app is not None
        eid = entity_workflow_id(self.app.name, agent, key)
        await workflow.get_external_workflow_handle(eid).signal(
            RELEASE_SIGNAL, {"token": f"{self.run['run_id']}/{activation}", "state": state})

    @workflow.signal(name=GRANTED_SIGNAL)
    def granted(self, grant: dict[str, Any]) -> None:
        self.grants[grant["token"]] = grant

    # -- promises ------------------------------------------------------------------------------

    async def wait_promise(self, name: str, agent: str, activation: str) -> Any:
        if name not in self.promises:
            self.run["waiting"].append({"name": name, "agent": agent, "activation": activation})
            await workflow.wait_condition(lambda: name in self.promises)
        return self.promises[name]

    def _set_promise(self, name: str, value: Any) -> None:
        self.promises[name] = value
        self.run["promises"][name] = value
        self.run["waiting"] = [w for w in self.run["waiting"] if w["name"] != name]

    @workflow.update(name=RESOLVE)
    def resolve(self, req: dict[str, Any]) -> dict[str, Any]:
        self._set_promise(req["name"], req.get("value"))
        return {"ok": True}

    @resolve.validator
    def _check_resolve(self, req: dict[str, Any]) -> None:
        if self.closed:
            raise ValueError("finished")
        if req["name"] in self.promises:
            raise ValueError("resolved")

    @workflow.signal(name=RESOLVE_SIGNAL)
    def resolve_later(self, req: dict[str, Any]) -> None:
        """The same as the update, for a client that could not wait for a worker to answer."""
        if not self.closed and req["name"] not in self.promises:
            self._set_promise(req["name"], req.get("value"))

    @workflow.update(name=AWAIT_WAITING)
    async def await_waiting(self) -> list[str]:
        """Answers once the run waits on a promise, or with [] once it has finished."""
        await workflow.wait_condition(lambda: bool(self.run["waiting"]) or self.closed)
        return [] if self.closed else [w["name"] for w in self.run["waiting"]]

    @workflow.query(name=RECORD_QUERY)
    def record(self) -> dict[str, Any]:
        return self.run


@workflow.defn(name=ENTITY_WORKFLOW, sandboxed=False, failure_exception_types=[RoostError])
class EntityWorkflow:
    """One entity keyed across runs: its state, handed to one activation at a time (FIFO)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.queue: list[dict[str, Any]] = []
        self.released: dict[str, dict[str, Any] | None] = {}

    @workflow.run
    async def main(self, init: dict[str, Any]) -> None:
        self.state = init.get("state") or {}
        self.queue = list(init.get("queue") or []) + self.queue
        while True:
            await workflow.wait_condition(lambda: bool(self.queue))
            req = self.queue.pop(0)
            token = req["token"]
            try:
                await workflow.get_external_workflow_handle(req["workflow_id"]).signal(
                    GRANTED_SIGNAL, {"token": token, "state": self.state})
            except ApplicationError:
                continue  # the run is gone
            await workflow.wait_condition(lambda t=token: t in self.released)  # type: ignore[misc]
            new = self.released.pop(token)
            if new is not None:
                self.state = new
            if not self.queue and workflow.info().get_current_history_length() > 2000:
                workflow.continue_as_new({"state": self.state, "queue": []})

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, req: dict[str, Any]) -> None:
        self.queue.append(req)

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, req: dict[str, Any]) -> None:
        self.released[req["token"]] = req.get("state")

    @workflow.query(name="state")
    def current(self) -> dict[str, Any]:
        return self.state
