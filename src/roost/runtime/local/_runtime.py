"""LocalRuntime: the embedded default. In-process asyncio, SQLite journal, crash-durable."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._activation import Message, Outcome, entity_of, execute
from ..._codec import dumps
from ..._graph import CompiledApp, entity_key, message_id
from ...errors import (
    ActivationLimitError,
    ConfigError,
    PromiseError,
    RunConflictError,
    RunNotFoundError,
    StepFailedError,
    TerminalError,
)
from ...result import FINISHED, ActivationRecord, RunRecord, StepRecord
from .._base import DurableRuntime, RunAborted, RunSummary, Submission
from ._context import _PROMISE_POLL, LocalContext
from ._journal import Durability, Journal
from ._owner import drop_token, is_alive, new_token

DEFAULT_PATH = Path(".roost") / "roost.db"
Listener = Callable[[dict[str, Any]], None]


@dataclass
class _LiveRun:
    app: CompiledApp
    run_id: str
    activations: int = 0
    failed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: set[str] = field(default_factory=set)
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)


class LocalRuntime(DurableRuntime):
    """Runs apps in this process with a SQLite journal (``.roost/roost.db`` by default).

    ``durability``: ``process`` survives a killed process (WAL, synchronous=NORMAL);
    ``machine`` also survives power loss (synchronous=FULL); ``memory`` keeps nothing."""

    name = "local"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, durability: Durability = "process",
                 resume: bool = True) -> None:
        self.path = Path(path or os.environ.get("ROOST_JOURNAL") or DEFAULT_PATH)
        self.durability: Durability = durability
        self.auto_resume = resume
        self.apps: dict[str, CompiledApp] = {}
        self.app_refs: dict[str, str | None] = {}
        self.listeners: list[Listener] = []
        self._live: dict[str, _LiveRun] = {}
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._journal: Journal | None = None
        self.owner = ""

    # -- lifecycle --------------------------------------------------------------------------

    def register(self, app: CompiledApp, app_ref: str | None = None) -> None:
        known = self.apps.get(app.name)
        if known is not None and known is not app and known.fingerprint != app.fingerprint:
            raise ConfigError(f"two different apps named {app.name!r} share one runtime; give them distinct names")
        self.apps[app.name] = app
        self.app_refs[app.name] = app_ref

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise ConfigError("the local runtime is not open (use 'async with runtime' or app.arun)")
        return self._journal

    async def open(self) -> None:
        if self._journal is not None:
            return
        self._journal = Journal(self.path, self.durability)
        self.owner = new_token()
        if self.auto_resume:
            for run_id, app_name, owner in self.journal.unfinished():
                app = self.apps.get(app_name)
                if app is not None and not is_alive(owner):
                    self._adopt(app, run_id, owner)

    async def close(self) -> None:
        if self._journal is None:
            return
        for live in self._live.values():
            for h in live.timers.values():
                h.cancel()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.journal.release(self.owner)
        drop_token(self.owner)
        self._journal.close()
        self._journal = None
        self._live.clear()

    def emit(self, event: str, run_id: str, agent: str, detail: str | None = None, **extra: Any) -> None:
        if self.listeners:
            data = {"event": event, "run_id": run_id, "agent": agent, "detail": detail, "at": time.time(), **extra}
            for listener in self.listeners:
                listener(data)

    def app_for(self, run_id: str) -> CompiledApp:
        return self._live[run_id].app

    # -- runs -------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> bool:
        app, run_id = submission.app, submission.run_id
        self.register(app, self.app_refs.get(app.name))
        entries = [Message(f"{agent}:entry", run_id, agent, "entry", payload) for agent, payload in submission.entries]
        created = self.journal.create_run(
            run_id=run_id, app=app.name, fingerprint=app.fingerprint, app_ref=self.app_refs.get(app.name),
            input_json=submission.input_json, input_hash=submission.input_hash, owner=self.owner, entries=entries,
        )
        if not created:
            row = self.journal.run_row(run_id)
            assert row is not None
            if row["app"] != app.name or row["input_hash"] != submission.input_hash:
                raise RunConflictError(
                    f"run id {run_id!r} is already used by a run of app {row['app']!r} with a different input; "
                    "a run id names one run: use a new id for new input",
                    run_id=run_id,
                )
            if row["status"] == "running" and run_id not in self._live and not is_alive(row["owner"]):
                self._adopt(app, run_id, row["owner"])
            return False
        live = _LiveRun(app, run_id)
        self._live[run_id] = live
        for m in entries:
            self.dispatch(m)
        return True

    async def resume(self, app: CompiledApp, run_id: str) -> None:
        self.register(app, self.app_refs.get(app.name))
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row["status"] in FINISHED or run_id in self._live:
            return
        if is_alive(row["owner"]):
            raise RunConflictError(f"run {run_id!r} is being run by another live process ({row['owner']})", run_id=run_id)
        self._adopt(app, run_id, row["owner"])

    def _adopt(self, app: CompiledApp, run_id: str, previous: str | None) -> None:
        row = self.journal.run_row(run_id)
        assert row is not None
        if row["fingerprint"] != app.fingerprint:
            raise RunConflictError(
                f"run {run_id!r} was started by a different version of app {app.name!r} (its agents, contracts or "
                "wiring changed); finish it with the code that started it",
                run_id=run_id,
            )
        if not self.journal.claim(run_id, self.owner, previous):
            return
        live = _LiveRun(app, run_id, activations=row["activations"], failed=row["error"] is not None)
        self._live[run_id] = live
        for m in self.journal.pending_messages(run_id):
            self.dispatch(m, replay=True)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        live = self._live.get(run_id)
        if live is not None:
            await asyncio.wait_for(live.done.wait(), timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:  # run by another process: follow the journal until it finishes
                row = self.journal.run_row(run_id)
                if row is None:
                    raise RunNotFoundError(run_id)
                if row["status"] in FINISHED:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id!r} did not finish within {timeout} s")
                await asyncio.sleep(0.1)
        return await self.get(run_id)

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        return [
            RunSummary(r["run_id"], r["app"], self._status(r["run_id"], r["status"]), r["created_at"], r["finished_at"], "local")
            for r in self.journal.list_runs(limit)
        ]

    def _status(self, run_id: str, status: str) -> str:
        return "waiting" if status == "running" and self.journal.waiting_on(run_id) else status

    async def get(self, run_id: str) -> RunRecord:
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        steps: dict[str, list[StepRecord]] = {}
        for j in self.journal.journal_of(run_id):
            steps.setdefault(j["activation"], []).append(
                StepRecord(j["position"], j["kind"], j["name"], j["status"], j["attempts"], j["started_at"],
                           j["finished_at"], json.loads(j["value"]) if j["value"] is not None else None)
            )
        acts = [
            ActivationRecord(
                id=a["id"], agent=a["target"], kind=a["kind"], status=a["status"], cause=a["cause"],
                started_at=a["started_at"], finished_at=a["finished_at"], attempts=a["attempts"],
                output=json.loads(a["output"]) if a["output"] is not None else None,
                error=json.loads(a["error"]) if a["error"] else None, steps=steps.get(a["id"], []),
            )
            for a in self.journal.activations(run_id)
        ]
        waiting = self.journal.waiting_on(run_id) if row["status"] == "running" else []
        return RunRecord(
            run_id=run_id, app=row["app"], status="waiting" if waiting else row["status"], runtime="local",
            input=json.loads(row["input"]), created_at=row["created_at"], finished_at=row["finished_at"],
            error=json.loads(row["error"]) if row["error"] else None, activations=acts,
            waiting_on=waiting,
        )

    # -- promises ---------------------------------------------------------------------------

    async def resolve(self, run_id: str, name: str, value: Any) -> None:
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row["status"] in FINISHED:
            raise PromiseError(f"run {run_id!r} is {row['status']}: nothing waits for {name!r}", run_id=run_id)
        raw = dumps(value, what=f"value resolving {name!r} of run {run_id!r}")
        if not self.journal.resolve(run_id, name, raw):
            raise PromiseError(f"{name!r} of run {run_id!r} is resolved already", run_id=run_id)
        fut = self._waiters.get((run_id, name))
        if fut is not None and not fut.done():
            fut.set_result(raw)

    async def wait_promise(self, live: _LiveRun, name: str) -> str:
        raw = self.journal.promise(live.run_id, name)
        if raw is not None:
            return raw
        key = (live.run_id, name)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), _PROMISE_POLL)
                except TimeoutError:
                    if live.aborted.is_set():
                        raise RunAborted() from None
                    raw = self.journal.promise(live.run_id, name)  # resolved by another process
                    if raw is not None:
                        return raw
        finally:
            self._waiters.pop(key, None)

    # -- delivery ---------------------------------------------------------------------------

    def dispatch(self, msg: Message, *, replay: bool = False) -> None:
        """Deliver ``msg`` now (or at ``deliver_at``): wakes the receiver directly, no polling."""
        live = self._live[msg.run_id]
        if live.failed and not replay:
            return
        delay = (msg.deliver_at - time.time()) if msg.deliver_at else 0.0
        if delay > 0:
            loop = asyncio.get_running_loop()
            live.timers[msg.id] = loop.call_later(delay, self._start, live, msg, replay)
        else:
            self._start(live, msg, replay)

    def _start(self, live: _LiveRun, msg: Message, replay: bool) -> None:
        live.timers.pop(msg.id, None)
        live.inflight.add(msg.id)
        task = asyncio.get_running_loop().create_task(self._activate(live, msg, replay), name=f"roost:{msg.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def _unlock(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    async def _activate(self, live: _LiveRun, msg: Message, replay: bool) -> None:
        key_error: TerminalError | None = None
        try:
            key = entity_of(live.app, msg)
        except TerminalError as exc:  # fails the activation below, with the message it carries
            key, key_error = entity_key(live.run_id, msg.meta), exc
        ekey = (msg.target, key)
        lock = self._lock(ekey)
        try:
            async with lock:
                await self._run_activation(live, msg, key, replay, key_error)
        finally:
            self._unlock(ekey)

    async def _run_activation(self, live: _LiveRun, msg: Message, key: str, replay: bool,
                              key_error: TerminalError | None = None) -> None:
        started = time.time()
        ctx = LocalContext(self, live, msg, key, replay)
        error: dict[str, Any] | None = None
        outcome = Outcome("absorbed")
        status = "cancelled"
        if not live.failed:
            self.emit("started", live.run_id, msg.target, msg.id)
            live.activations += 1
            try:
                if live.activations > live.app.max_activations:
                    raise ActivationLimitError(
                        f"run {live.run_id!r} went past its limit of {live.app.max_activations} activations "
                        f"(at agent {msg.target!r}); a loop's when= condition never turned false? "
                        "Raise App(max_activations=...) if the run really needs more",
                        run_id=live.run_id,
                    )
                if key_error is not None:
                    raise key_error
                outcome = await execute(live.app, ctx, msg, key)
                status = outcome.status
            except RunAborted:
                status = "cancelled"
            except StepFailedError as exc:
                error = _error(msg.target, exc.step, exc.attempts, exc.cause)
            except Exception as exc:
                error = _error(msg.target, None, ctx.attempts, exc)
        if error is not None:
            status = "failed"
            live.failed = True
        reply = None
        if msg.kind == "call" and status == "completed":
            reply = (msg.meta["reply_to"], json.dumps(outcome.output_json))
            outcome.routes = []
        new = [
            Message(message_id(r.target, msg.id, r.id_suffix), live.run_id, r.target, r.kind, r.payload, msg.id, r.meta)
            for r in (outcome.routes if status in ("completed", "rejected") and not live.failed else [])
        ]
        live.inflight.discard(msg.id)
        pending, run_status = self.journal.complete(
            run_id=live.run_id, msg_id=msg.id, status=status,
            output_json=json.dumps(outcome.output_json) if outcome.output_json is not None else None,
            error_json=json.dumps(error) if error else None, attempts=ctx.attempts, started_at=started, new=new,
            state_writes={(msg.target, key): ctx.state.writes} if ctx.state.writes else {},
            reply=reply, fail_run=json.dumps(error) if error else None,
            cancel_others=list(live.inflight) if error else None,
        )
        self.emit("finished", live.run_id, msg.target, msg.id, status=status, error=error)
        if reply is not None:
            fut = self._waiters.get((live.run_id, reply[0]))
            if fut is not None and not fut.done():
                fut.set_result(reply[1])
        if error is not None:
            live.aborted.set()
            for h in live.timers.values():
                h.cancel()
            live.timers.clear()
        for m in new:
            self.dispatch(m)
        if run_status in FINISHED:
            live.done.set()
            self._live.pop(live.run_id, None)


def _error(agent: str, step: str | None, attempts: int, exc: BaseException) -> dict[str, Any]:
    return {
        "agent": agent,
        "step": step,
        "attempts": max(1, attempts),
        "error_type": type(exc).__name__,
        "error_message": str(exc),
    }
