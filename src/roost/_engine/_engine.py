"""The run engine: one run's semantics as a deterministic state machine.

``RunEngine.handle(event)`` returns the commands the backend must carry out. It has no I/O, no
clock and no event loop: the same events give the same commands, so a backend persists the
events and rebuilds the engine after a crash by handling them again. Every event costs O(1)
amortized in the size of the run (an ``each`` fan-out costs O(items) once, when it is routed).

What it owns: routing along ``reacts_to`` edges (``when=``, ``map=``, ``each=``), converge and
gather collection, batch identity, approvals, ``ctx.send``/``ctx.call`` delivery and replies,
the activation limit, failure propagation, cancellation and completion.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from .._codec import revive
from .._graph import CompiledApp
from ._model import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    BatchPath,
    CancelRequested,
    Command,
    DeliverReply,
    ErrorInfo,
    Event,
    FinishRun,
    MessageSent,
    PromiseResolved,
    Reply,
    RunStarted,
    RunStatus,
    StartActivation,
    activation_id,
    batch_label,
)
from ._plan import closers
from ._promises import is_approved

_PLANS: weakref.WeakKeyDictionary[CompiledApp, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _closers(app: CompiledApp) -> dict[str, tuple[str, ...]]:
    plan = _PLANS.get(app)
    if plan is None:
        plan = _PLANS[app] = closers(app)
    return plan


@dataclass(slots=True)
class _Batch:
    """One list output sent with ``each=True``: open until no activation inside it is left."""

    id: str
    source: str
    parent: BatchPath
    closers: tuple[str, ...]
    live: int = 0
    items: dict[str, list[tuple[tuple[int, str, str], str]]] = field(default_factory=dict)
    """Per gathering agent: (source order, item as JSON text). Text, not objects: a batch of 100k
    items then holds no objects the garbage collector has to walk until it closes."""


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A routed value, computed before anything is applied (a failing ``when``/``map`` applies nothing)."""

    edge: int
    target: str
    payload: Any
    path: BatchPath
    suffix: str


class RouteError(Exception):
    """A user's ``when=`` or ``map=`` function raised while routing an output."""


def _path_key(path: BatchPath) -> str:
    return "/".join(f"{b[0]}.{b[1]}" for b in path)


class RunEngine:
    """The state of one run, rebuilt by handling its events in the order they were persisted."""

    def __init__(self, app: CompiledApp, run_id: str) -> None:
        self.app = app
        self.run_id = run_id
        self.status: RunStatus = "running"
        self.error: ErrorInfo | None = None
        self.activations: dict[str, Activation] = {}
        """Activations started and not finished (running, or their output waiting for approval)."""
        self._held: dict[str, tuple[str, Any]] = {}
        """Activations whose output waits for approval: id -> (approval name, output)."""
        self.done: dict[str, tuple[str, str]] = {}
        """Finished activations: id -> (agent, status). Strings only, so a run of 100k activations
        keeps no 100k objects for the garbage collector to walk."""
        self.promises: dict[str, Any] = {}
        self.replies: dict[str, Reply] = {}
        self.count = 0
        """Activations started (the limit is ``app.max_activations``)."""
        self.open = 0
        """Activations not finished yet, including outputs waiting for approval."""
        self._plan = _closers(app)
        self._started = False
        self._ending: RunStatus | None = None
        self._converge: dict[tuple[str, str], dict[int, Any]] = {}
        self._fired: set[tuple[str, str]] = set()
        self._batches: dict[str, _Batch] = {}
        self._approvals: dict[str, str] = {}
        self._approval_seq: dict[str, int] = {}
        self._finishing: str | None = None
        """The activation being finished (its outcome reported or its approval decided): an abort
        never lists it."""
        self.touched: list[str] = []
        """Activations whose status the last ``handle`` changed (a backend's record to update)."""

    # -- queries ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def ending(self) -> bool:
        """The run failed or was cancelled: nothing new starts, running work is being stopped."""
        return self._ending is not None

    def waiting(self) -> list[str]:
        """Names of the approvals the run waits on, oldest first."""
        return list(self._approvals)

    def approval_of(self, activation: str) -> str | None:
        """The approval name an activation's output waits on, if it does."""
        held = self._held.get(activation)
        return held[0] if held is not None else None

    def status_of(self, activation: str) -> tuple[str, str] | None:
        """(agent, status) of an activation this run started, finished or not."""
        spec = self.activations.get(activation)
        if spec is None:
            return self.done.get(activation)
        return spec.agent, "waiting" if activation in self._held else "pending"

    def pending(self) -> list[Activation]:
        """Activations started and not finished (what a backend restarts after a crash)."""
        return [spec for aid, spec in self.activations.items() if aid not in self._held]

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; returns the commands it leads to (none for a duplicate)."""
        out: list[Command] = []
        self.touched = []
        if self.finished:
            return out
        if isinstance(event, RunStarted):
            self._on_started(event, out)
        elif isinstance(event, ActivationFinished):
            self._finishing = event.activation
            try:
                self._on_finished(event, out)
            finally:
                self._finishing = None
        elif isinstance(event, MessageSent):
            self._on_sent(event, out)
        elif isinstance(event, PromiseResolved):
            self._on_resolved(event, out)
        elif isinstance(event, CancelRequested):
            self._end("cancelled", None, out)
        if self._started and self.open == 0:
            self.status = self._ending or "completed"
            out.append(FinishRun(self.status, self.error))
        return out

    def _on_started(self, event: RunStarted, out: list[Command]) -> None:
        if self._started:
            return
        self._started = True
        for agent, payload in event.entries:
            self._create(Activation(f"{agent}:entry", agent, "entry", (payload,)), out)

    def _on_finished(self, event: ActivationFinished, out: list[Command]) -> None:
        spec = self.activations.get(event.activation)
        if spec is None or spec.id in self._held:
            return  # a duplicate delivery, or an activation this run never started
        self.touched.append(spec.id)
        if event.status == "failed":
            error = event.error or ErrorInfo(spec.agent, None, 1, "Error", "the activation failed")
            if not self._reply(spec, Reply("failed", error=error, callee=spec.agent), out):
                self._end("failed", error, out)
            self._release(spec, "failed", out)
        elif event.status == "cancelled":
            self._reply(spec, Reply("cancelled", callee=spec.agent), out)
            self._release(spec, "cancelled", out)
        elif self.app.specs[spec.agent].approval and not self.ending:
            base = spec.agent + (f"[{batch_label(spec.batch)}]" if spec.batch else "")
            n = self._approval_seq[base] = self._approval_seq.get(base, 0) + 1
            name = base if n == 1 else f"{base}#{n}"
            self._held[spec.id] = (name, event.output)
            self._approvals[name] = spec.id
            out.append(AwaitApproval(name, spec.id))
            if name in self.promises:
                self._decide(name, out)
        else:
            self._complete(spec, event.output, out, rejected=False)

    def _on_sent(self, event: MessageSent, out: list[Command]) -> None:
        spec = self.activations.get(event.sender)
        if spec is None or spec.id in self._held or self.ending:
            return
        if event.kind == "send":
            self._create(Activation(activation_id(event.target, spec.id, "send", event.position), event.target,
                                    "send", (event.payload,), spec.id, (), event.deliver_at), out)
            return
        key = f"{spec.id}/{event.position}"
        chain = spec.call_chain + (spec.agent,)
        if event.target in chain or key in self.replies:
            return  # the context refuses a call cycle before sending; a reply exists already
        self._create(Activation(activation_id(event.target, spec.id, "call", event.position), event.target, "call",
                                (event.payload,), spec.id, (), event.deliver_at, key, chain), out)

    def _on_resolved(self, event: PromiseResolved, out: list[Command]) -> None:
        if event.name in self.promises:
            return
        self.promises[event.name] = event.value
        if event.name in self._approvals:
            self._decide(event.name, out)

    # -- transitions ------------------------------------------------------------------------

    def _decide(self, name: str, out: list[Command]) -> None:
        aid = self._approvals.pop(name)
        self.touched.append(aid)
        _, output = self._held.pop(aid)
        self._finishing = aid
        try:
            self._complete(self.activations[aid], output, out, rejected=not is_approved(self.promises[name]))
        finally:
            self._finishing = None

    def _complete(self, spec: Activation, output: Any, out: list[Command], *, rejected: bool) -> None:
        status = "rejected" if rejected else "completed"
        if spec.kind == "call":
            self._reply(spec, Reply("rejected" if rejected else "completed", None if rejected else output,
                                    callee=spec.agent), out)
        elif not rejected and not self.ending:
            try:
                deliveries, batches = self._route(spec, output)
            except RouteError as exc:
                status = "failed"
                self._end("failed", ErrorInfo(spec.agent, None, 1, "TerminalError", str(exc)), out)
            else:
                for batch in batches:
                    self._batches[batch.id] = batch
                for d in deliveries:
                    self._deliver(spec, d, out)
                for batch in batches:
                    if batch.live == 0:
                        self._close(batch, out)
        self._release(spec, status, out)

    def _reply(self, spec: Activation, reply: Reply, out: list[Command]) -> bool:
        """Answer a ``call`` activation's caller; False when nobody waits (not a call, or the caller ended)."""
        if spec.kind != "call" or spec.reply_to is None or spec.cause is None:
            return False
        if spec.cause not in self.activations or spec.cause in self._held:
            return False
        self.replies[spec.reply_to] = reply
        out.append(DeliverReply(spec.cause, spec.reply_to, reply))
        return True

    def _release(self, spec: Activation, status: str, out: list[Command]) -> None:
        """An activation is done: it no longer holds its run or its batches open."""
        self.open -= 1
        del self.activations[spec.id]
        self.done[spec.id] = (spec.agent, status)
        for ref in reversed(spec.batch):
            batch = self._batches.get(ref[0])
            if batch is None:
                continue
            batch.live -= 1
            if batch.live == 0:
                self._close(batch, out)

    def _close(self, batch: _Batch, out: list[Command]) -> None:
        """Every item of ``batch`` is done: each gathering agent gets its items, in source order."""
        self._batches.pop(batch.id, None)
        if self.ending:
            return
        for agent in sorted(set(batch.closers) | set(batch.items)):
            texts = [text for _, text in sorted(batch.items.get(agent, []), key=lambda kv: kv[0])]
            items = json.loads("[" + ",".join(texts) + "]")
            self._create(Activation(activation_id(agent, "gather", batch.id), agent, "gather", (items,),
                                    batch.source, batch.parent), out)

    def _create(self, spec: Activation, out: list[Command]) -> None:
        if self.ending or spec.id in self.activations or spec.id in self.done:
            return
        self.count += 1
        if self.count > self.app.max_activations:
            self._end("failed", ErrorInfo(
                spec.agent, None, 1, "ActivationLimitError",
                f"run {self.run_id!r} went past its limit of {self.app.max_activations} activations "
                f"(at agent {spec.agent!r}); a loop's when= condition never turned false? "
                "Raise App(max_activations=...) if the run really needs more"), out)
            return
        self.activations[spec.id] = spec
        self.open += 1
        for ref in spec.batch:
            self._batches[ref[0]].live += 1  # open: the activation that routes into it holds it
        out.append(StartActivation(spec))

    def _end(self, status: RunStatus, error: ErrorInfo | None, out: list[Command]) -> None:
        """Fail or cancel the run: nothing new starts; pending activations are stopped."""
        if self._ending is not None:
            return
        self._ending, self.error = status, error
        for name in list(self._approvals):
            spec = self.activations.pop(self._approvals.pop(name))
            del self._held[spec.id]
            self.touched.append(spec.id)
            self.done[spec.id] = (spec.agent, "cancelled")
            self.open -= 1
        self._batches.clear()
        self._converge.clear()
        running = tuple(a for a in self.activations if a != self._finishing)
        if running:
            out.append(AbortActivations(running))

    # -- routing ----------------------------------------------------------------------------

    def _route(self, spec: Activation, output: Any) -> tuple[list[_Delivery], list[_Batch]]:
        """Where an output goes. A list output sent with ``each=True`` is one batch, however
        many ``each`` edges carry it: item i has the same batch path on each of them.

        ``when=`` and ``map=`` see the output as its contract's type; an edge with neither passes
        the output's JSON on as it is (no conversion on the hot path)."""
        agent = self.app.specs[spec.agent]
        edges = self.app.out_edges[spec.agent]
        typed = revive(output, agent.output_type) if any(e.when or e.map for e in edges) else output
        deliveries: list[_Delivery] = []
        batches: list[_Batch] = []
        item_paths: list[BatchPath] = []
        for ei, edge in enumerate(edges):
            if edge.each:
                if not batches:
                    batches.append(_Batch(f"{spec.id}#", spec.id, spec.batch, self._plan[spec.agent]))
                    item_paths = [spec.batch + ((batches[0].id, i, len(output)),) for i in range(len(output))]
                raw, values, paths = list(output), list(typed), item_paths
            else:
                raw, values, paths = [output], [typed], [spec.batch]
            for i, (value, path) in enumerate(zip(values, paths, strict=True)):
                payload = raw[i]
                try:
                    if edge.when is not None and not edge.when(value):
                        continue
                    if edge.map is not None:
                        payload = pydantic_core.to_jsonable_python(edge.map(value))
                except Exception as exc:
                    raise RouteError(
                        f"run {self.run_id!r}: a when= or map= function on the edge from agent {spec.agent!r} to "
                        f"{edge.target!r} raised {type(exc).__name__}: {exc}") from exc
                deliveries.append(_Delivery(ei, edge.target, payload, path, f"{ei}.{i}"))
        return deliveries, batches

    def _deliver(self, source: Activation, d: _Delivery, out: list[Command]) -> None:
        target = self.app.specs[d.target]
        if target.kind == "single":
            self._create(Activation(activation_id(d.target, source.id, d.suffix), d.target, "edge", (d.payload,),
                                    source.id, d.path), out)
        elif target.kind == "converge":
            key = (d.target, _path_key(d.path))
            slot = target.slots[source.agent]
            slots = self._converge.setdefault(key, {}) if key not in self._fired else None
            if slots is None or slot in slots:
                return  # converge fires once per batch item (once per run outside batches)
            slots[slot] = d.payload
            if len(slots) == target.arity:
                self._fired.add(key)
                del self._converge[key]
                self._create(Activation(activation_id(d.target, "converge", key[1]), d.target, "converge",
                                        tuple(slots[i] for i in range(target.arity)), source.id, d.path), out)
        elif not d.path:
            self._create(Activation(activation_id(d.target, source.id, d.suffix), d.target, "gather",
                                    ([d.payload],), source.id, ()), out)
        else:
            top = d.path[-1]
            batch = self._batches.get(top[0])
            if batch is not None:  # None once the run is ending: nothing is gathered any more
                batch.items.setdefault(d.target, []).append(((top[1], source.id, d.suffix), json.dumps(d.payload)))
