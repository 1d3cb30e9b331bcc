"""The run workflow: one Restate Workflow invocation per run, driving the run engine.

``roost.<app>.run`` is keyed by the run id. Its ``run`` handler feeds the run engine
(``roost._engine``) the run's events and carries out its commands: activations run as tasks of
this one invocation, and their ``ctx`` calls become Restate commands issued by the ``Driver`` in
a deterministic order. Nothing else is persisted for the engine: on replay the same commands
give the same results back, so the engine's events, and its decisions, come again as before.

Beside the engine the workflow keeps the run's record in its own state (``run``, and
``c:<n>``, chunks of activation records) for the shared handlers: ``get``, ``resolve``
(a workflow durable promise per approval or ``ctx.promise``), ``waiting`` (blocks until the run
waits on a promise or finishes) and ``promise`` (a keyed agent's ``ctx.promise``).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import restate

from ... import _tracing
from ..._activation import key_of
from ..._engine import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    CancelRequested,
    DeliverReply,
    ErrorInfo,
    Event,
    MessageSent,
    PromiseResolved,
    Reply,
    RunEngine,
    RunStarted,
    StartActivation,
    encode_activation,
    failed_activation,
    resolution_problem,
)
from ..._graph import CompiledApp
from .._base import RunAborted
from .._branches import detached
from .._slots import Slots, outcome
from ._context import JSON, Host, MemoryState, RunContext, restate_signal, run_activation
from ._driver import Cancelled, Driver
from ._names import ACTIVATE, CHANGED, agent_service, run_service
from ._retry import RETRY

MAX_RUNNING = 64
"""Activations executing at once in one run (more wait in order; one waiting on a timer, a
promise or a reply does not count). It bounds the commands in flight, hence each round's cost."""
CHUNK = "c:"
LIVE = "live"
"""State key: the activations executing now (no outcome yet), so readers see agents at work."""
"""State keys ``c:<n>``: the records of the activations that finished (or changed) since chunk n-1."""
CHUNK_RECORDS = 256
CHUNK_SECONDS = 0.5
"""Records are written when a round starts no new work (the run waits on steps, timers or promises
under way) or the run finishes, or once this many are pending, or once this long (in journaled
time) has passed since the last write."""
RECORDS_IN_OUTPUT = 1000
"""Runs with at most this many activations return their records with the workflow's output
(a client then needs no second read)."""

EventKey = tuple[str, str, str]


class WorkflowRun(Host):
    """One run inside its workflow invocation."""

    def __init__(self, ctx: restate.WorkflowContext, app: CompiledApp, sub: dict[str, Any]) -> None:
        self.ctx = ctx
        self.app = app
        self.run_id = ctx.key()
        self.sub = sub
        self.driver = Driver(ctx)
        self.steps: set[asyncio.Task[Any]] = set()
        self.engine = RunEngine(app, self.run_id)
        self.broken: ErrorInfo | None = None
        self._events: list[tuple[EventKey, Event]] = []
        self._entities: dict[tuple[str, str], dict[str, Any]] = {}
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._replies: dict[str, asyncio.Future[Reply]] = {}
        self._aborted: set[str] = set()
        self._slots = Slots(MAX_RUNNING, self._start)
        self._info: dict[str, dict[str, Any]] = {}
        self._dirty: dict[str, None] = {}
        self._unwritten: dict[str, dict[str, Any]] = {}
        self._chunks = 0
        self._latest = 0.0  # the latest journaled finish time of an activation
        self._written_at = 0.0  # ... when records were last written
        self._records: dict[str, dict[str, Any]] | None = {}
        self._waiting: dict[str, int] = {}
        self._approvals: dict[str, str] = {}  # activation -> the approval its output waits on
        self._live: dict[str, dict[str, Any]] = {}  # executing now, for readers (the LIVE key)
        self._live_changed = False
        self._held: set[str] = set()  # activations traced as they ended with their output held for approval
        self._waits = 0
        self._waiting_changed = False

    # -- the loop ---------------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        try:
            return await self._main()
        finally:
            self.driver.cancel()

    async def _main(self) -> dict[str, Any]:
        try:
            self.ctx.set("run", self._run_record(), serde=JSON)
            self._handle(RunStarted(tuple((str(a), p) for a, p in self.sub["entries"])))
            await self._loop()
        except Exception as exc:
            if restate_signal(exc):
                raise  # the connection to Restate is gone: this attempt ends, Restate retries the invocation
            self._break(exc)  # roost's own code failed
        try:
            self._flush()
            self.driver.issue()
        except Exception as exc:  # the record could not be written: the workflow's output still says why
            self._break(exc)
        final = self._final()
        self._trace_run(final["run"])
        return final

    def _traced(self) -> bool:
        """Spans are made here: tracing is on, and this attempt runs new code, not a replay of
        its journal (Restate's own replay-aware logging asks the same question)."""
        if not (self.app.tracing and _tracing.enabled()):
            return False
        vm = getattr(self.ctx, "vm", None)
        return vm is None or not vm.is_replaying()

    def _trace_activation(self, r: dict[str, Any]) -> None:
        """The span of an activation whose outcome this round learned. On replay the same round
        comes again, but the commands that followed it are still in the journal, so Restate is
        replaying and no span is made twice (the step spans were made where the steps ran)."""
        if not self._traced():
            return
        start = r.get("started") or self.sub["created_at"]
        error = r.get("error") or None
        _tracing.activation_span(self.run_id, r["id"], r["agent"], r.get("cause"), r["status"], start,
                                 r.get("finished") or start, attempts=int(r.get("attempts") or 1),
                                 error=f"{error.get('error_type')}: {error.get('error_message')}" if error else None)

    def _trace_run(self, run: dict[str, Any]) -> None:
        """The run's span, made in the one attempt that ends it."""
        if not (self.app.tracing and _tracing.enabled()):
            return
        created = float(run["created_at"])
        end = float(run.get("finished_at") or created)
        error = run.get("error") or None
        _tracing.run_span(self.app.name, self.run_id, run["status"], created, max(end, created),
                          error=f"{error.get('error_type')}: {error.get('error_message')}" if error else None)

    async def _loop(self) -> None:
        while True:
            await self.driver.settle()
            if self._events:
                batch = sorted(self._events, key=lambda e: e[0])
                self._events = []
                for _, event in batch:
                    self._handle(event)
                continue
            if self.engine.finished or self.broken is not None:
                return
            self._flush(idle=not self.driver.requested)
            if not self.driver.busy and not self._slots.queue:
                self._break(RuntimeError("the run has nothing left to run or wait for, yet is not finished"))
                continue
            self.driver.issue()
            try:
                await self.driver.wait()
            except Cancelled:
                self._events.append((("~", "cancel", ""), CancelRequested("cancelled through Restate")))
                self.cancel_steps()

    def _handle(self, event: Event) -> None:
        if self.broken is not None:
            return
        try:
            self._carry_out(event)
        except Exception as exc:  # a bug in roost: never strand the run
            self._break(exc)

    def _carry_out(self, event: Event) -> None:
        commands = self.engine.handle(event)
        for aid in self.engine.touched:
            self._dirty[aid] = None
        for c in commands:
            if isinstance(c, StartActivation):
                self._info[c.activation.id] = {"id": c.activation.id, "agent": c.activation.agent,
                                               "kind": c.activation.kind, "cause": c.activation.cause}
                self._slots.admit(c.activation)
            elif isinstance(c, AwaitApproval):
                self._dirty[c.activation] = None
                self._approvals[c.activation] = c.name
                self.waiting(c.name, True)
                self._await_approval(c.name)
            elif isinstance(c, DeliverReply):
                waiter = self._replies.pop(c.key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(c.reply)
            elif isinstance(c, AbortActivations):
                self._abort(c.ids)

    def _break(self, exc: BaseException) -> None:
        """roost itself failed: the run ends failed, naming the cause (never a silent stop)."""
        if self.broken is None:
            self.broken = ErrorInfo("-", None, 1, type(exc).__name__,
                                    f"run {self.run_id!r} stopped: roost failed: {type(exc).__name__}: {exc}")

    # -- activations ------------------------------------------------------------------------

    def _start(self, spec: Activation) -> None:
        self._live[spec.id] = {"id": spec.id, "agent": spec.agent, "kind": spec.kind, "cause": spec.cause,
                               "status": "running"}
        self._live_changed = True
        self.driver.spawn(self._activate(spec), f"roost:{spec.id}", context=detached())

    def pause(self, activation: str, on: bool) -> None:
        self._slots.pause(on)

    def aborted(self, activation: str) -> bool:
        return activation in self._aborted

    async def _activate(self, spec: Activation) -> None:
        event = await outcome(spec, self._run(spec), self._slots)
        info = self._info.get(spec.id)
        if info is not None:
            info["output"] = event.output
            info["error"] = event.error.to_json() if event.error else None
        self._events.append(((spec.id, "1", ""), event))

    async def _run(self, spec: Activation) -> ActivationFinished:
        try:
            key = key_of(self.app, spec, self.run_id)
        except Exception as exc:  # a keyed_by function failed: the activation fails, naming it
            return failed_activation(spec, None, 1, exc)
        if spec.not_before is not None:
            now = float(await self._ask(spec.id, "~t", lambda: self.ctx.time()))
            if spec.not_before > now:
                self.pause(spec.id, True)
                try:
                    await self._ask(spec.id, "~delay", lambda: self.ctx.sleep(_delta(spec.not_before - now)),
                                    abortable=True)
                finally:
                    self.pause(spec.id, False)
        if self.app.specs[spec.agent].key_fn is not None and spec.kind not in ("converge", "gather"):
            return await self._remote(spec, key)
        ekey = (spec.agent, key)
        lock, users = self._locks.get(ekey) or (asyncio.Lock(), 0)
        self._locks[ekey] = (lock, users + 1)
        try:
            async with lock:
                if self.aborted(spec.id):
                    return ActivationFinished(spec.id, "cancelled")
                state = MemoryState(self._entities.get(ekey) or {}, spec.agent)
                ctx = RunContext(self, spec, key, state)
                event = await run_activation(ctx, spec)
                self._note(spec.id, ctx.started, ctx.finished, ctx.attempts, ctx.steps)
                if event.status == "completed" and state.writes:
                    merged = {**(self._entities.get(ekey) or {}), **state.writes}
                    merged = {k: v for k, v in merged.items() if v is not None}
                    if merged:
                        self._entities[ekey] = merged
                    else:
                        self._entities.pop(ekey, None)
                return event
        finally:
            lock, users = self._locks[ekey]
            if users <= 1:
                del self._locks[ekey]
            else:
                self._locks[ekey] = (lock, users - 1)

    async def _remote(self, spec: Activation, key: str) -> ActivationFinished:
        """A keyed agent runs in its Virtual Object (state across runs, one activation per key at
        a time); what it sent comes back with its outcome."""
        body = json.dumps({"run_id": self.run_id, "activation": encode_activation(spec)}).encode()
        service = agent_service(self.app.name, spec.agent)
        try:
            raw = await self._ask(spec.id, "~object", lambda: self.ctx.generic_call(service, ACTIVATE, body, key=key))
        except restate.TerminalError as exc:
            return failed_activation(spec, None, 1, RuntimeError(f"the invocation of {service!r} failed: {exc.message}"))
        result: dict[str, Any] = json.loads(raw)
        self._note(spec.id, result.get("started"), result.get("finished"), int(result.get("attempts", 1)),
                   result.get("steps", []))
        for s in result.get("sent", []):
            self.sent(MessageSent(spec.id, s["position"], s["target"], "send", s["payload"], s.get("deliver_at")))
        error = result.get("error")
        if result["status"] == "failed":
            return ActivationFinished(spec.id, "failed", error=ErrorInfo.from_json(error or {"agent": spec.agent}))
        if result["status"] == "cancelled":
            return ActivationFinished(spec.id, "cancelled")
        return ActivationFinished(spec.id, "completed", result.get("output"))

    async def _ask(self, activation: str, what: str, make: Any, *, abortable: bool = False) -> Any:
        if self.aborted(activation):
            raise RunAborted()
        return await self.driver.request((activation, what), make, abortable=abortable)

    def _note(self, activation: str, started: float | None, finished: float | None, attempts: int,
              steps: list[dict[str, Any]]) -> None:
        info = self._info.get(activation)
        if info is not None:
            info.update(started=started, finished=finished, attempts=attempts, steps=steps)

    def _abort(self, ids: tuple[str, ...]) -> None:
        for aid in ids:
            self._aborted.add(aid)
            self.driver.fail(aid, RunAborted())
        prefixes = tuple(f"{aid}/" for aid in ids)
        for key, waiter in list(self._replies.items()):
            if key.startswith(prefixes) and not waiter.done():
                waiter.set_exception(RunAborted())
        for spec in self._slots.drop(self._aborted):
            self._events.append(((spec.id, "1", ""), ActivationFinished(spec.id, "cancelled")))

    # -- what activations ask for -----------------------------------------------------------

    def sent(self, event: MessageSent) -> asyncio.Future[Reply] | None:
        self._events.append(((event.sender, "0", event.position), event))
        if event.kind != "call":
            return None
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[f"{event.sender}/{event.position}"] = waiter
        return waiter

    def waiting(self, name: str, on: bool) -> None:
        n = self._waiting.get(name, 0) + (1 if on else -1)
        if n > 0:
            self._waiting[name] = n
        else:
            self._waiting.pop(name, None)
        self._waiting_changed = True

    def promise(self, name: str) -> Any:
        return self.ctx.promise(name).value()

    def _await_approval(self, name: str) -> None:
        fut = self.driver.request(("~approval", name), lambda: self.ctx.promise(name).value(), abortable=True)
        fut.add_done_callback(lambda f: self._approved(name, f))

    def _approved(self, name: str, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the run ended (the approval's activation was aborted)
        self.waiting(name, False)
        self._events.append((("~", "promise", name), PromiseResolved(name, fut.result())))
        self.driver.poke()

    # -- the record -------------------------------------------------------------------------

    def _flush(self, idle: bool = True) -> None:
        """Write what changed this round into the workflow's state (read by ``get``). ``idle``:
        the round issues no new command (the run waits on work already under way)."""
        for aid in self._dirty:
            known = self.engine.status_of(aid)
            if known is None or known[1] == "pending":
                continue
            record = {**self._info.get(aid, {"id": aid, "agent": known[0]}), "status": known[1]}
            name = self._approvals.get(aid)
            if name is not None:  # its approval, as a step of its own (as on every runtime)
                decided = name in self.engine.promises
                record["steps"] = [*(record.get("steps") or []), {
                    "position": "approval", "kind": "promise", "name": name, "status": "done" if decided else "waiting",
                    "attempts": 0, "value": self.engine.promises.get(name)}]
            self._unwritten[aid] = record
            if self._live.pop(aid, None) is not None:
                self._live_changed = True
            finished_at = record.get("finished")
            if isinstance(finished_at, (int, float)) and finished_at > self._latest:
                self._latest = finished_at
                if self._written_at == 0.0:
                    self._written_at = finished_at  # the clock of the chunks starts with the first record
            if known[1] == "waiting":
                if aid not in self._held:  # its span once, as it ends with its output held (as elsewhere)
                    self._held.add(aid)
                    self._trace_activation(record)
            else:
                held = aid in self._held
                self._held.discard(aid)
                if not held and (record.get("started") is not None or record.get("status") != "cancelled"):
                    self._trace_activation(record)  # it ran (a cancelled one that never started did not)
                self._info.pop(aid, None)
                self._approvals.pop(aid, None)
                if self._records is not None:
                    self._records[aid] = record
                    if len(self._records) > RECORDS_IN_OUTPUT:
                        self._records = None
        self._dirty.clear()
        finished = self.engine.finished or self.broken is not None
        # The run starting to wait is news for clients blocked in 'waiting': the records go with it.
        urgent = self._waiting_changed and bool(self._waiting)
        if self._unwritten and (idle or finished or urgent or len(self._unwritten) >= CHUNK_RECORDS
                                or self._latest - self._written_at >= CHUNK_SECONDS):
            # One state key per chunk of records: a few writes per run, not one per activation.
            # When is decided from what replay sees again (commands, journaled step times), so
            # replay writes the same; a record waits only while the run keeps starting new work.
            self.ctx.set(f"{CHUNK}{self._chunks}", list(self._unwritten.values()), serde=JSON)
            self._chunks += 1
            self._unwritten = {}
            self._written_at = self._latest
        if self._live_changed:
            # One small key, rewritten in the rounds that start or end activations, so that an
            # agent at work (a long model call) shows as running before it has an outcome.
            self._live_changed = False
            self.ctx.set(LIVE, list(self._live.values()), serde=JSON)
        if self._waiting_changed or finished:  # what the run waits on is never stale
            self._waiting_changed = False
            record = self._run_record()
            if record["waiting"] or finished:
                self._waits += 1
                record["waits"] = self._waits
                name = f"{CHANGED}{self._waits}"
                self.driver.fire(("~", "changed", name), lambda: self.ctx.promise(name).resolve(record["waiting"]))
            self.ctx.set("run", record, serde=JSON)

    def _run_record(self) -> dict[str, Any]:
        sub, engine = self.sub, self.engine
        status = engine.status if self.broken is None else "failed"
        error = self.broken or engine.error
        finished_at = None
        if status != "running":
            times = [r.get("finished") or 0 for r in (self._records or {}).values()]
            finished_at = max([*times, sub["created_at"]])
        return {"run_id": self.run_id, "app": self.app.name, "fingerprint": sub.get("fingerprint"),
                "input": sub.get("input"), "input_hash": sub.get("input_hash"), "created_at": sub["created_at"],
                "status": status, "error": error.to_json() if error else None, "finished_at": finished_at,
                "waiting": sorted(self._waiting), "waits": self._waits, "activations": engine.count}

    def _final(self) -> dict[str, Any]:
        run = self._run_record()
        if self._records is None:
            return {"run": run}
        return {"run": run, "activations": list(self._records.values())}


def chunk_number(key: str) -> int:
    return int(key[len(CHUNK):])


def _delta(seconds: float) -> timedelta:
    return timedelta(seconds=max(0.0, seconds))


def run_workflow(app: CompiledApp, retention: timedelta | None = None) -> restate.Workflow:
    """``retention``: how long Restate keeps a finished run's record and promises (None: its default)."""
    wf = restate.Workflow(run_service(app.name), invocation_retry_policy=RETRY)

    # The run never reads its own state (it keeps everything in memory and rebuilds it by replay):
    # nothing is preloaded into it, however many activation records a large run has written.
    @wf.main(state_preload=False, input_serde=JSON, output_serde=JSON, workflow_retention=retention)
    async def run(ctx: restate.WorkflowContext, sub: dict[str, Any]) -> dict[str, Any]:
        final = await WorkflowRun(ctx, app, sub).main()
        error = final["run"]["error"]
        if final["run"]["status"] == "failed" and error:
            # Restate's own tools show the run failed; clients read the record from the state.
            raise restate.TerminalError(
                f"run {ctx.key()!r} failed: agent {error['agent']!r}"
                + (f", step {error['step']!r}" if error.get("step") else "")
                + f": {error['error_type']}: {error['error_message']}")
        return final

    @wf.handler()
    async def get(ctx: restate.WorkflowSharedContext, _: dict[str, Any] | None = None) -> dict[str, Any] | None:
        run = await ctx.get("run", type_hint=dict)
        if run is None:
            return None
        chunks = sorted((k for k in await ctx.state_keys() if k.startswith(CHUNK)), key=chunk_number)
        records: dict[str, Any] = {r["id"]: r for r in await ctx.get(LIVE, type_hint=list) or []}
        for key in chunks:
            for record in await ctx.get(key, type_hint=list) or []:
                records[record["id"]] = record  # a later chunk has the newer record
        return {"run": run, "activations": list(records.values())}

    @wf.handler(state_preload=False)  # reads one key ('run'), whatever the run's size
    async def resolve(ctx: restate.WorkflowSharedContext, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req["name"])
        run = await ctx.get("run", type_hint=dict)  # None: accepted, not executing yet (the client knows it)
        if run is not None and run["status"] != "running":
            return {"error": "finished", "status": run["status"]}
        if name.startswith(CHANGED):
            return {"error": "reserved"}
        problem = resolution_problem(app, name, req.get("value"), run["waiting"] if run is not None else [])
        if problem is not None:
            return {"error": "refused", "message": problem}
        try:
            await ctx.promise(name, type_hint=object).resolve(req.get("value"))
        except restate.TerminalError:
            return {"error": "resolved"}
        return {"ok": True}

    @wf.handler(state_preload=False)  # reads one key ('run'), whatever the run's size
    async def waiting(ctx: restate.WorkflowSharedContext, _: dict[str, Any] | None = None) -> list[str]:
        """The promises the run waits on, once it waits on any; ``[]`` once it has finished."""
        run = await ctx.get("run", type_hint=dict)
        if run is not None and run["status"] != "running":
            return []
        if run is not None and run["waiting"]:
            return list(run["waiting"])
        waits = int(run["waits"]) if run is not None else 0  # None: the run has not started executing yet
        names: list[str] = await ctx.promise(f"{CHANGED}{waits + 1}").value()
        return names

    @wf.handler()
    async def promise(ctx: restate.WorkflowSharedContext, name: str) -> Any:
        """The value of the run's promise ``name`` once resolved (a keyed agent's ``ctx.promise``)."""
        return await ctx.promise(name).value()

    return wf
