"""Roost's orchestration as Temporal workflow code (users never write any).

``RunWorkflow`` serves every app: its type is ``roost.<app>`` (a dynamic workflow) and its id the
run id. It drives the run engine (``roost._engine``): activations run as tasks of the workflow
(``roost._activation.perform`` with a ``TemporalContext``), their steps as activities, and the
engine decides what runs next. Entities scoped to the run keep their state here; entities
``keyed_by`` across runs live in an ``EntityWorkflow`` each, which hands its state to one
activation at a time.

The code is deterministic given the history: Temporal's workflow event loop runs tasks in a
deterministic order, activation ids come from the engine, times are ``workflow.now()``. It runs
outside Temporal's sandbox (user modules are imported once, as ordinary Python); roost errors
fail the run instead of retrying its workflow task for ever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, WorkflowIDReusePolicy
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from ... import _tracing
from ..._activation import key_of, perform
from ..._engine import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    CancelRequested,
    Command,
    DeliverReply,
    Event,
    MessageSent,
    PromiseResolved,
    Reply,
    RunEngine,
    RunStarted,
    StartActivation,
    decode,
    encode,
    failed_activation,
    resolution_problem,
)
from ..._graph import CompiledApp
from ...errors import RoostError, StepFailedError
from .._base import RunAborted
from .._branches import fork_on_create, root
from .._retry import RetryPolicy
from .._slots import Slots, outcome
from ._activities import BATCH_SIZE, find_app
from ._context import HEARTBEAT_TIMEOUT, STEP_TIMEOUT, TemporalContext, temporal_retry
from ._continue import CARRY_LIMIT, due, pack, unpack
from ._names import (
    ACQUIRE_SIGNAL,
    AWAIT_WAITING,
    ENTITY_WORKFLOW,
    GRANTED_SIGNAL,
    RECORD_QUERY,
    RELEASE_SIGNAL,
    RESOLVE,
    RESOLVE_REFUSED,
    RESOLVE_SIGNAL,
    entity_workflow_id,
)

CONTINUED = "RoostContinued"
"""The failure type of an ``await-waiting`` update cut short by a continue-as-new."""


@dataclass
class _Entity:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: dict[str, Any] = field(default_factory=dict)


BATCH_RETRY = TemporalRetryPolicy(initial_interval=timedelta(seconds=0.2), backoff_coefficient=2.0,
                                  maximum_interval=timedelta(seconds=5), maximum_attempts=10)
"""A batch activity's own retries: only when its worker died or failed (each step in it is
retried inside the activity per its policy)."""
BATCH_MIN = 8
"""Fewest steps of one kind, from different activations in the same turn, that share activities."""
RECORDS_IN_RESULT = 1000
"""Activation records in the workflow's result, and per page of the ``record`` query: about 0.5 MB,
well under Temporal's 2 MB payload limit; a larger run's record is read in pages."""
PACKED_LIMIT = 1_500_000
"""Largest compressed activation records the result carries (bytes of base64)."""
MAX_RUNNING = 256
"""Activations executing at once in one run (more wait in order; one waiting on a timer, a
promise or a reply does not count): it bounds the activities pending at once (Temporal allows
2,000 per workflow) and the work of each workflow task."""


@workflow.defn(dynamic=True, sandboxed=False)
class RunWorkflow:
    def __init__(self) -> None:
        # Update and signal handlers may run before main() (a resolution sent right after start).
        self.run: dict[str, Any] = {"error": None, "waiting": [], "promises": {}, "activations": {}, "expected": []}
        self.promises: dict[str, Any] = {}
        self.entities: dict[str, _Entity] = {}
        self.grants: dict[str, dict[str, Any]] = {}
        self.started_entities: set[str] = set()
        self.closed = False
        self.app: CompiledApp | None = None
        self.engine: RunEngine | None = None
        self.replies: dict[str, asyncio.Future[Reply]] = {}
        self.aborted: set[str] = set()
        self.slots = Slots(MAX_RUNNING, self._start)
        self.approvals: dict[str, str] = {}
        self.broken: dict[str, Any] | None = None
        self.steps: dict[tuple[str, RetryPolicy], list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]] = {}
        self.flush_scheduled = False
        self.log: list[Event] = []
        """The engine's events, in order (encoded only if the run continues as new)."""
        self.journals: dict[str, dict[str, dict[str, Any]]] = {}
        """Running activation -> what its ctx calls returned, by position (see ``_continue``)."""
        self.draining = False
        """The run is about to continue as new: no new activity starts."""
        self.inflight = 0
        """Activities and signals to other workflows in flight."""
        self.carry_too_large = False
        self.cancelling = False
        self.cancellable: set[asyncio.Task[Any]] = set()
        """Tasks awaiting the activities of async steps (cancelled with the run)."""

    # -- the run -----------------------------------------------------------------------------

    @workflow.run
    async def main(self, args: Sequence[RawValue]) -> dict[str, Any]:
        sub: dict[str, Any] = workflow.payload_converter().from_payload(args[0].payload, dict)
        self.app = app = find_app(workflow.info().task_queue, sub["app"], sub.get("fingerprint"))
        carried = sub.pop("carry", None)
        self.run.update({k: v for k, v in sub.items() if k != "entries"})
        self.run.update(status="running", finished_at=None)
        self.engine = engine = RunEngine(app, self.run["run_id"])
        fork_on_create(asyncio.get_running_loop())  # branch positions inside activations
        if carried is not None:
            self._restore(unpack(carried))
        else:
            self._apply(RunStarted(tuple((e["agent"], e["payload"]) for e in sub["entries"])))
        for name, value in list(self.promises.items()):  # resolved before the run started
            self._apply(PromiseResolved(name, value))
        while True:
            try:
                if await self._until_finished_or_due() or await self._continue_as_new(sub):
                    break
            except asyncio.CancelledError:  # cancelled through Temporal (roost's cancel, or its tools)
                self._cancel("cancelled through Temporal")
        self.closed = True
        await workflow.wait_condition(workflow.all_handlers_finished)  # await-waiting callers get []
        run = self.run
        error = self.broken or (engine.error.to_json() if engine.error else None)
        run["status"] = "failed" if self.broken is not None else engine.status
        run["error"] = error
        run["waiting"] = []
        run["finished_at"] = max([a.get("finished") or 0 for a in run["activations"].values()] + [run["created_at"]])
        final = self._final()
        if app.tracing and not workflow.unsafe.is_replaying():
            message = f"{error['error_type']}: {error['error_message']}" if error else None
            _tracing.run_span(app.name, run["run_id"], run["status"], run["created_at"], run["finished_at"], message)
        if run["status"] == "cancelled":
            workflow.upsert_memo({"roost_status": "cancelled"})  # the workflow itself completes
        if run["status"] == "failed" and error:
            raise ApplicationError(f"run {run['run_id']!r} failed at agent {error['agent']!r}: {error['error_type']}: "
                                   f"{error['error_message']}", final, type=error["error_type"], non_retryable=True)
        return final

    # -- continue-as-new (see _continue) -------------------------------------------------------

    def _ended(self) -> bool:
        return self.broken is not None or (self.engine is not None and self.engine.finished)

    async def _until_finished_or_due(self) -> bool:
        """Wait until the run ends (True) or its history is long enough to continue as new (False)."""
        await workflow.wait_condition(lambda: self._ended() or (not self.carry_too_large and not self.cancelling
                                                                     and due(self.run.get("history_limit"))))
        return self._ended()

    async def _continue_as_new(self, sub: dict[str, Any]) -> bool:
        """Carry the run into a new run of this workflow once the activities in flight are done.
        False (the run goes on here) when the carried state would be too large; True when the run
        ended meanwhile."""
        size = len(pack(self._carry()))
        if size > CARRY_LIMIT:
            self.carry_too_large = True
            workflow.logger.warning(
                "run %r: its history is long, but its state (%d bytes compressed) is too large to continue as new; "
                "it goes on in this history (Temporal fails a workflow past 51,200 events)", self.run.get("run_id"), size)
            return False
        self.draining = True
        await workflow.wait_condition(
            lambda: self._ended() or (self.inflight == 0 and workflow.all_handlers_finished()))
        if self._ended():
            return True
        workflow.continue_as_new({**sub, "carry": pack(self._carry())}, memo=dict(workflow.memo()),
                                 task_timeout=workflow.info().task_timeout)

    def _carry(self) -> dict[str, Any]:
        return {"log": [encode(e) for e in self.log], "run": self.run, "promises": self.promises, "approvals": self.approvals,
                "entities": {k: e.state for k, e in self.entities.items()}, "journals": self.journals,
                "grants": self.grants, "started_entities": sorted(self.started_entities),
                "aborted": sorted(self.aborted)}

    def _restore(self, carried: dict[str, Any]) -> None:
        """The run as the workflow before a continue-as-new left it: the engine rebuilt from its
        events, and the activations it was running started again with their journals."""
        engine = self.engine
        assert engine is not None
        for data in carried["log"]:
            event = decode(data)
            engine.handle(event)  # its commands were carried out before
            self.log.append(event)
        self.run.update(carried["run"])
        self.promises.update(carried["promises"])
        self.approvals.update(carried["approvals"])
        self.entities.update({k: _Entity(state=v) for k, v in carried["entities"].items()})
        self.journals.update(carried["journals"])
        self.grants.update(carried["grants"])
        self.started_entities.update(carried["started_entities"])
        self.aborted.update(carried["aborted"])
        for spec in engine.pending():
            self.slots.admit(spec)

    def _cancel(self, reason: str) -> None:
        """The run ends cancelled: the engine aborts what runs (waits raise RunAborted), and the
        activities of async steps are cancelled; a sync step's activity finishes and is recorded."""
        if self.cancelling:
            return
        self.cancelling = True
        self.draining = False  # no continue-as-new now: the run is ending
        self._apply(CancelRequested(reason))
        for task in list(self.cancellable):
            task.cancel()

    def journal(self, activation: str) -> dict[str, dict[str, Any]]:
        return self.journals.setdefault(activation, {})

    @contextlib.asynccontextmanager
    async def io(self) -> AsyncIterator[None]:
        """Around an activity or a signal to another workflow: none starts once the run is about
        to continue as new (the new run starts it), and that waits for those in flight."""
        if self.draining:
            await workflow.wait_condition(lambda: not self.draining)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def _final(self) -> dict[str, Any]:
        """The run's record as the workflow's result. Temporal caps a payload at 2 MB: a large run's
        activations go compressed, and past that the client reads them in pages (``record``)."""
        acts = self.run["activations"]
        if len(acts) <= RECORDS_IN_RESULT:
            return self._page(0, RECORDS_IN_RESULT)
        packed = base64.b64encode(zlib.compress(json.dumps(acts).encode(), 6)).decode()
        if len(packed) <= PACKED_LIMIT:
            return {**self.run, "activations": {}, "packed": packed, "total": len(acts), "offset": 0}
        return self._page(0, RECORDS_IN_RESULT)

    def _page(self, offset: int, limit: int) -> dict[str, Any]:
        """The run's record with the activations ``offset`` to ``offset + limit`` (in start order);
        ``total`` says how many there are."""
        acts = self.run["activations"]
        keys = list(acts)[offset:offset + limit] if offset or len(acts) > limit else list(acts)
        return {**self.run, "activations": {k: acts[k] for k in keys}, "total": len(acts), "offset": offset}

    def _apply(self, event: Event) -> None:
        """Hand ``event`` to the run engine and carry out its commands (workflow code: deterministic)."""
        engine = self.engine
        if engine is None or self.broken is not None:
            return
        try:
            self.log.append(event)
            commands = engine.handle(event)
            self._note(engine)
            for c in commands:
                self._command(c)
        except Exception as exc:  # roost's own code failed: the run ends failed, naming it
            self.broken = {"agent": "-", "step": None, "attempts": 1, "error_type": type(exc).__name__,
                           "error_message": f"run {self.run.get('run_id')!r} stopped: roost failed: "
                                            f"{type(exc).__name__}: {exc}"}

    def _note(self, engine: RunEngine) -> None:
        """The record of the activations the last event changed (the ``record`` query reads it)."""
        acts = self.run["activations"]
        for aid in engine.touched:
            known = engine.status_of(aid)
            record = acts.get(aid)
            if known is not None and record is not None:
                record["status"] = known[1]
        self.run["error"] = engine.error.to_json() if engine.error else None

    def _command(self, c: Command) -> None:
        if isinstance(c, StartActivation):
            spec = c.activation
            acts = self.run["activations"]
            acts[spec.id] = {"id": spec.id, "agent": spec.agent, "kind": spec.kind, "status": "pending",
                             "cause": spec.cause, "output": None, "error": None, "attempts": 0, "started": None,
                             "finished": None, "seq": len(acts)}
            self.slots.admit(spec)
        elif isinstance(c, AwaitApproval):
            self.approvals[c.activation] = c.name
            agent = self.run["activations"].get(c.activation, {}).get("agent")
            self.run["waiting"].append({"name": c.name, "agent": agent, "activation": c.activation})
            record = self.run["activations"].get(c.activation)
            if record is not None:
                record["status"] = "waiting"
                # Its approval, as a step of its own (as on every runtime).
                record["steps"] = [*(record.get("steps") or []), {
                    "position": "approval", "kind": "promise", "name": c.name, "status": "waiting", "attempts": 0,
                    "value": None}]
        elif isinstance(c, DeliverReply):
            waiter = self.replies.pop(c.key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(c.reply)
        elif isinstance(c, AbortActivations):
            self.aborted.update(c.ids)
            prefixes = tuple(f"{aid}/" for aid in c.ids)
            for key, waiter in list(self.replies.items()):
                if key.startswith(prefixes) and not waiter.done():
                    waiter.set_exception(RunAborted())
            for spec in self.slots.drop(self.aborted):
                self._apply(ActivationFinished(spec.id, "cancelled"))

    # -- activations -------------------------------------------------------------------------

    def _start(self, spec: Activation) -> None:
        asyncio.get_running_loop().create_task(self._activate(spec))

    def pause(self, on: bool) -> None:
        """An activation waits on a timer, a promise or a reply: its slot is free meanwhile."""
        self.slots.pause(on)

    async def _activate(self, spec: Activation) -> None:
        event = await outcome(spec, self._run_activation(spec), self.slots)
        self.journals.pop(spec.id, None)
        record = self.run["activations"].get(spec.id)
        if record is not None:
            record["output"] = event.output
            record["error"] = event.error.to_json() if event.error else None
        self._apply(event)
        if self.approvals.get(spec.id) is not None:
            record = self.run["activations"].get(spec.id)
            if record is not None:
                record["status"] = "waiting"
        if record is not None and record.get("started") is not None:
            self._trace_activation(spec, record, event)

    def _trace_activation(self, spec: Activation, record: dict[str, Any], event: ActivationFinished) -> None:
        """Its span, made when the workflow code first reaches its end (never while Temporal
        replays the history; its steps' spans were made where the activities ran)."""
        assert self.app is not None
        if not self.app.tracing or workflow.unsafe.is_replaying():
            return
        status = "waiting" if record.get("status") == "waiting" else event.status
        error = f"{event.error.error_type}: {event.error.error_message}" if event.error else None
        _tracing.activation_span(self.run["run_id"], spec.id, spec.agent, spec.cause, status, record["started"],
                                 record.get("finished"), attempts=int(record.get("attempts") or 1), error=error)

    async def _run_activation(self, spec: Activation) -> ActivationFinished:
        assert self.app is not None
        app, agent = self.app, spec.agent
        if spec.not_before is not None:
            delay = spec.not_before - workflow.now().timestamp()
            if delay > 0:
                await self.wait(spec.id, None, delay)
        try:
            key = key_of(app, spec, self.run["run_id"])
        except Exception as exc:  # a keyed_by function failed: the activation fails, naming it
            return failed_activation(spec, None, 1, exc)
        if self.aborted_(spec.id):
            return ActivationFinished(spec.id, "cancelled")
        cross_run = app.specs[agent].key_fn is not None and spec.kind not in ("converge", "gather")
        local = None if cross_run else self.entities.setdefault(f"{agent}/{key}", _Entity())
        if local is not None:
            await local.lock.acquire()
            state = local.state
        else:
            state = await self._acquire(agent, key, spec.id)
        ctx = TemporalContext(self, app, spec, key, state)
        record = self.run["activations"].get(spec.id)
        if record is not None:
            record["status"] = "running"
        new_state = None
        try:
            with root(ctx):
                output = await perform(app, ctx, spec)
            new_state = ctx.state.data
            event = ActivationFinished(spec.id, "completed", output)
        except RunAborted:
            event = ActivationFinished(spec.id, "cancelled")
        except StepFailedError as exc:
            event = failed_activation(spec, exc.step, exc.attempts, exc.cause)
        except Exception as exc:  # a roost or user error outside any step: the agent's code ran once
            event = failed_activation(spec, None, 1, exc)
        finally:
            if local is not None:
                if new_state is not None:
                    local.state = new_state
                local.lock.release()
            else:
                await self._release(agent, key, spec.id, new_state)
        if record is not None:
            # A failed activation shows the attempts its error names (those of the failing step).
            record.update(attempts=event.error.attempts if event.error else ctx.attempts,
                          started=ctx.started or workflow.now().timestamp(),
                          finished=ctx.finished or workflow.now().timestamp(), steps=ctx.steps)
        return event

    # -- steps ------------------------------------------------------------------------------

    def step(self, atype: str, policy: RetryPolicy, req: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Run a step as an activity; the steps of one kind requested in the same turn of the
        workflow (the items of a fan-out) go together, up to BATCH_SIZE per activity."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.steps.setdefault((atype, policy), []).append((req, fut))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_steps)
        return fut

    def _flush_steps(self) -> None:
        self.flush_scheduled = False
        pending, self.steps = self.steps, {}
        loop = asyncio.get_running_loop()
        for (atype, policy), items in pending.items():
            # Only steps of different activations share an activity (the items of a fan-out); the
            # branches of one activation keep an activity each, so none waits for another.
            pool: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
            singles: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
            seen: set[str] = set()
            for item in items:
                activation = item[0]["key"].rsplit("/", 1)[0]
                (singles if activation in seen else pool).append(item)
                seen.add(activation)
            if len(pool) < BATCH_MIN:
                singles, pool = singles + pool, []
            for item in singles:
                self._track(loop.create_task(self._run_steps(atype, policy, [item])), [item])
            for i in range(0, len(pool), BATCH_SIZE):
                self._track(loop.create_task(self._run_steps(atype, policy, pool[i:i + BATCH_SIZE])), pool[i:i + BATCH_SIZE])

    def _track(self, task: asyncio.Task[Any], items: list[tuple[dict[str, Any], Any]]) -> None:
        """Steps of one kind share one function: async ones are cancelled with the run."""
        if items and items[0][0].get("cancellable"):
            self.cancellable.add(task)
            task.add_done_callback(self.cancellable.discard)

    async def _run_steps(self, atype: str, policy: RetryPolicy,
                         items: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        if len(items) == 1:  # one step: one activity, retried by Temporal per the step's policy
            req, fut = items[0]
            try:
                async with self.io():
                    done = await workflow.execute_activity(
                        atype, req, result_type=dict, start_to_close_timeout=STEP_TIMEOUT,
                        heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=temporal_retry(policy))
            except GeneratorExit:
                raise  # an evicted workflow's coroutines are being closed
            except asyncio.CancelledError:  # the run was cancelled: so is its async step
                fut.cancel()
                return
            except BaseException as exc:  # ActivityError (mapped by the context), or the workflow ending
                if not fut.done():
                    fut.set_exception(exc)
                return
            if not fut.done():
                fut.set_result(done)
            return
        batch = {"app": items[0][0]["app"], "batch": [req for req, _ in items],
                 "policy": {"max_attempts": policy.max_attempts, "initial_interval": policy.initial_interval,
                            "backoff": policy.backoff, "max_interval": policy.max_interval}}
        try:
            async with self.io():
                out = await workflow.execute_activity(
                    atype, batch, result_type=dict, start_to_close_timeout=STEP_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=BATCH_RETRY)
        except GeneratorExit:
            raise
        except asyncio.CancelledError:
            for _, fut in items:
                fut.cancel()
            return
        except BaseException as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), done in zip(items, out["results"], strict=True):
            if not fut.done():
                fut.set_result(done)

    # -- what activations ask for ------------------------------------------------------------

    def aborted_(self, activation: str) -> bool:
        return activation in self.aborted

    async def wait(self, activation: str, ready: Any, timeout: float | None) -> None:
        """Wait until ``ready()`` (or ``timeout`` seconds); RunAborted if the activation is aborted meanwhile."""
        self.pause(True)
        try:
            try:
                await workflow.wait_condition(
                    lambda: activation in self.aborted or (ready is not None and bool(ready())),
                    timeout=timeout)
            except TimeoutError:
                pass
        finally:
            self.pause(False)
        if activation in self.aborted:
            raise RunAborted()

    def sent(self, event: MessageSent) -> asyncio.Future[Reply] | None:
        waiter: asyncio.Future[Reply] | None = None
        if event.kind == "call":
            waiter = asyncio.get_running_loop().create_future()
            self.replies[f"{event.sender}/{event.position}"] = waiter
        self._apply(event)
        return waiter

    # -- entities keyed across runs ------------------------------------------------------------

    async def _acquire(self, agent: str, key: str, activation: str) -> dict[str, Any]:
        assert self.app is not None
        eid = entity_workflow_id(self.app.name, agent, key)
        token = f"{self.run['run_id']}/{activation}"
        journal = self.journal(activation)
        held = journal.get("acquire")
        if held is not None:  # held since before a continue-as-new
            return held["state"]  # type: ignore[no-any-return]
        if token not in self.grants:
            async with self.io():
                if eid not in self.started_entities:
                    self.started_entities.add(eid)
                    try:
                        await workflow.start_child_workflow(
                            ENTITY_WORKFLOW, {"state": {}, "queue": []}, id=eid,
                            task_queue=self.run.get("entity_queue"),  # every version's workers poll it
                            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
                    except WorkflowAlreadyStartedError:
                        pass
                # Sent again by a run continued as new: the entity ignores a token it knows.
                await workflow.get_external_workflow_handle(eid).signal(
                    ACQUIRE_SIGNAL, {"workflow_id": workflow.info().workflow_id, "token": token})
        await workflow.wait_condition(lambda: token in self.grants)
        state: dict[str, Any] = self.grants.pop(token)["state"]
        journal["acquire"] = {"op": "acquire", "state": state}
        return state

    async def _release(self, agent: str, key: str, activation: str, state: dict[str, Any] | None) -> None:
        assert self.app is not None
        eid = entity_workflow_id(self.app.name, agent, key)
        async with self.io():
            await workflow.get_external_workflow_handle(eid).signal(
                RELEASE_SIGNAL, {"token": f"{self.run['run_id']}/{activation}", "state": state})

    @workflow.signal(name=GRANTED_SIGNAL)
    def granted(self, grant: dict[str, Any]) -> None:
        self.grants[grant["token"]] = grant

    # -- promises ------------------------------------------------------------------------------

    async def wait_promise(self, name: str, agent: str, activation: str) -> Any:
        if name not in self.promises:
            entry = {"name": name, "agent": agent, "activation": activation}
            self.run["waiting"].append(entry)
            try:
                await self.wait(activation, lambda: name in self.promises, None)
            finally:
                if entry in self.run["waiting"]:
                    self.run["waiting"].remove(entry)
        return self.promises[name]

    def _set_promise(self, name: str, value: Any) -> None:
        self.promises[name] = value
        self.run["promises"][name] = value
        self.run["waiting"] = [w for w in self.run["waiting"] if w["name"] != name]
        for aid, approval in list(self.approvals.items()):
            if approval == name:
                del self.approvals[aid]
                for step in self.run["activations"].get(aid, {}).get("steps") or []:
                    if step.get("position") == "approval":
                        step.update(status="done", value=value)
        self._apply(PromiseResolved(name, value))

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
        # Before main() has run (a resolution sent right after start) the app is not known yet:
        # only the checks above apply then.
        problem = resolution_problem(self.app, req["name"], req.get("value"),
                                     [w["name"] for w in self.run["waiting"]], self.approvals.values())
        if problem is not None:
            raise ValueError(f"{RESOLVE_REFUSED}{problem}")

    @workflow.signal(name=RESOLVE_SIGNAL)
    def resolve_later(self, req: dict[str, Any]) -> None:
        """The same as the update, for a client that could not wait for a worker to answer."""
        if not self.closed and req["name"] not in self.promises:
            self._set_promise(req["name"], req.get("value"))

    @workflow.update(name=AWAIT_WAITING)
    async def await_waiting(self) -> list[str]:
        """Answers once the run waits on a promise, or with [] once it has finished; fails with
        CONTINUED when the run continues as new (the caller asks the new run)."""
        await workflow.wait_condition(lambda: bool(self.run["waiting"]) or self.closed or self.draining)
        if self.draining and not self.closed and not self.run["waiting"]:
            raise ApplicationError("the run continues as new: ask again", type=CONTINUED)
        return [] if self.closed else [w["name"] for w in self.run["waiting"]]

    @workflow.query(name=RECORD_QUERY)
    def record(self, page: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's record; a large run's activations come in pages (``{"offset", "limit"}``)."""
        page = page or {}
        return self._page(int(page.get("offset", 0)), int(page.get("limit", RECORDS_IN_RESULT)))


@workflow.defn(name=ENTITY_WORKFLOW, sandboxed=False, failure_exception_types=[RoostError])
class EntityWorkflow:
    """One entity keyed across runs: its state, handed to one activation at a time (FIFO)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.queue: list[dict[str, Any]] = []
        self.released: dict[str, dict[str, Any] | None] = {}
        self.holder: str | None = None

    @workflow.run
    async def main(self, init: dict[str, Any]) -> None:
        self.state = init.get("state") or {}
        self.queue = list(init.get("queue") or []) + self.queue
        while True:
            await workflow.wait_condition(lambda: bool(self.queue))
            req = self.queue.pop(0)
            token = self.holder = req["token"]
            try:
                await workflow.get_external_workflow_handle(req["workflow_id"]).signal(
                    GRANTED_SIGNAL, {"token": token, "state": self.state})
            except ApplicationError:
                continue  # the run is gone
            await workflow.wait_condition(lambda t=token: t in self.released)  # type: ignore[misc]
            new = self.released.pop(token)
            self.holder = None
            if new is not None:
                self.state = new
            if not self.queue and workflow.info().get_current_history_length() > 2000:
                workflow.continue_as_new({"state": self.state, "queue": []})

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, req: dict[str, Any]) -> None:
        # A run continued as new asks again for what it asked (or holds) before.
        if req["token"] != self.holder and all(q["token"] != req["token"] for q in self.queue):
            self.queue.append(req)

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, req: dict[str, Any]) -> None:
        self.released[req["token"]] = req.get("state")

    @workflow.query(name="state")
    def current(self) -> dict[str, Any]:
        return self.state
