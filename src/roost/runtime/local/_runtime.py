"""LocalRuntime: the embedded default. In-process asyncio, SQLite journal, crash-durable.

A run is the run engine (``roost._engine``) plus what this backend adds: the engine's events
persisted in the journal (with a record of each activation for ``get``), activations run as
asyncio tasks, timers for delayed messages, and promises resolved from this or another process.
After a crash the engine is rebuilt by handling the persisted events again; the activations it
still counts as started are run again, replaying their journaled steps.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import _tracing
from ..._activation import key_of, outcome_of, shared_entity
from ..._codec import dumps
from ..._config import Duration, load_retention, parse_retention
from ..._engine import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    CancelRequested,
    Command,
    DeliverReply,
    ErrorInfo,
    Event,
    FinishRun,
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
from ...errors import (
    CancelError,
    ConfigError,
    PromiseError,
    RoostError,
    RunConflictError,
    RunNotFoundError,
    RunTimeoutError,
)
from ...result import FINISHED, ActivationRecord, RunRecord, StepRecord
from .._base import DurableRuntime, PruneReport, RunAborted, RunSummary, Submission
from .._branches import detached, install, internal
from .._steps import attempt_running
from ._busy import delays
from ._context import LocalContext
from ._detached import DetachedSteps
from ._journal import Committer, Durability, Journal, Op
from ._lease import (
    LostRun,
    Owner,
    alive,
    check_entity,
    check_run,
    claim_run,
    describe,
    drop_entity,
    take_entity,
)
from ._lease import lease_seconds as lease_seconds_of
from ._upkeep import PRUNE_BATCH, WAL_LIMIT, count_prunable, delete_runs, ensure_prune_index, prunable

DEFAULT_PATH = Path(".roost") / "roost.db"
Listener = Callable[[dict[str, Any]], None]
_log = logging.getLogger("roost.local")
_PROMISE_POLL = 0.25  # seconds; only while a run waits on a promise another process may resolve
_CANCEL_POLL = 0.5  # seconds between looks for cancel requests another process made for this one's runs
_FOLLOW_POLL = 0.1  # seconds; while waiting on a run another process runs
_ABORTED = object()


@dataclass
class _LiveRun:
    """A run this process drives: its engine and what is in flight."""

    app: CompiledApp
    run_id: str
    engine: RunEngine
    seq: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    broken: ErrorInfo | None = None
    lost: bool = False  # another process took the run over (this one's lease had expired)
    finished_here: bool = False  # this runtime committed the run's end
    poller: asyncio.Task[None] | None = None
    cancelling: bool = False
    steps: set[asyncio.Task[Any]] = field(default_factory=set)
    """Async steps running (cancelled when the run is)."""


class LocalRuntime(DurableRuntime):
    """Runs apps in this process with a SQLite journal (``.roost/roost.db`` by default).

    ``durability``: ``process`` survives a killed process (WAL, synchronous=NORMAL);
    ``machine`` also survives power loss (synchronous=FULL); ``memory`` keeps nothing.
    ``max_running``: activations executing at once (more wait in a queue, in order; one that
    waits on a timer, a promise or a reply does not count). It bounds the memory of a large
    fan-out, and how many steps (model calls) run concurrently.
    ``retention``: how long finished runs are kept (``"7d"``, seconds, a timedelta, or
    ``"forever"``; default: the ``retention`` setting, ``ROOST_RETENTION``, else 7 days). While
    open, the runtime deletes older ones in the background (``auto_prune=False``: only through
    :meth:`prune`).
    ``lease_seconds`` (default 10, or ``ROOST_LEASE_SECONDS``): how long the runs of a process that
    stopped renewing its lease stay its own before another process may take them over (a process
    that died is noticed at once on the same machine; see ``_lease.py``)."""

    name = "local"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, durability: Durability = "process",
                 resume: bool = True, max_running: int = 256, retention: Duration | None = None,
                 auto_prune: bool = True, lease_seconds: float | None = None) -> None:
        self.path = Path(path or os.environ.get("ROOST_JOURNAL") or DEFAULT_PATH)
        self.durability: Durability = durability
        self.auto_resume = resume
        self.retention = load_retention() if retention is None else parse_retention(retention)
        self.auto_prune = auto_prune
        self.wal_limit = WAL_LIMIT
        if not isinstance(max_running, int) or max_running < 1:
            raise ConfigError(f"max_running must be an integer >= 1, got {max_running!r}")
        self.max_running = self._max_running = max_running
        self.lease_seconds = lease_seconds_of(lease_seconds)
        self.apps: dict[str, CompiledApp] = {}
        self.app_refs: dict[str, str | None] = {}
        self.listeners: list[Listener] = []
        self._live: dict[str, _LiveRun] = {}
        self._stopped: dict[str, _LiveRun] = {}
        """Runs that stopped in this process after a fault (``_break``), still this runtime's in the
        journal: a cancel requested for one is carried out once the journal can be written."""
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._journal: Journal | None = None
        self._committer: Committer | None = None
        self._running = 0
        self._queue = _Queue()
        self._owner: Owner | None = None
        self._registering: asyncio.Future[None] | None = None
        self.sync_steps: dict[str, tuple[str, str]] = {}
        """Sync steps awaited now: idempotency key -> (run id, "step 'x' of agent 'a'")."""
        self.detached_steps = DetachedSteps(Owner(":memory:", self.lease_seconds))
        """Sync steps whose activation stopped while they ran (see ``_detached.py``); kept after
        ``close``, which leaves them running, so that a caller can wait for them."""

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
        install(asyncio.get_running_loop())
        self._journal = Journal(self.path, self.durability, retention=self.retention if self.auto_prune else None,
                                wal_limit=self.wal_limit)
        self._committer = Committer(self._journal)
        self._owner = Owner(self._journal.path, self.lease_seconds)
        self.detached_steps = DetachedSteps(self._owner)
        self._spawn(self._watch_cancels(), "roost:cancels")
        if self.auto_resume:
            for run_id, app_name, owner in self.journal.unfinished():
                app = self.apps.get(app_name)
                if app is None or self.owned_elsewhere(owner):
                    continue
                row = self.journal.run_row(run_id)
                if row is not None and row["fingerprint"] != app.fingerprint:
                    # A deploy: the run belongs to another version of the app. Left alone (listed,
                    # cancellable); a process with that version's code resumes it.
                    _log.info("run %r of another version of app %r left alone: resume it with the code that "
                              "started it ('roost runs resume %s --app FILE')", run_id, app_name, run_id)
                    continue
                await self._adopt(app, run_id)

    async def close(self) -> None:
        if self._journal is None:
            return
        for live in self._live.values():
            for h in live.timers.values():
                h.cancel()
        self._queue.clear()
        self.max_running = 0  # nothing queued starts while closing
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Sync steps still running were detached by the cancellation: their runs stay this
        # owner's until they are journaled (_detached.py), the others go back now.
        kept = self.detached_steps.close()
        if self._committer is not None:
            if self._owner is not None and self._owner.registered:  # its runs and entities go back
                self._committer.submit(functools.partial(self._owner.release, keep=kept)).add_done_callback(_quiet)
            await self._committer.drain()
        if self._owner is not None:
            if not kept:  # else the last detached step closes it
                self._owner.close()
            self._owner = None
        self.sync_steps.clear()
        self._registering = None
        self._journal.close()
        self._journal = None
        self._live.clear()
        self._stopped.clear()
        self._running = 0
        self.max_running = self._max_running

    def running_steps(self) -> list[str]:
        """The sync steps running in a thread now ("step 'x' of agent 'a'"): what stopping the
        runtime leaves to finish (they are journaled when they return, see ``_detached.py``)."""
        return [what for key, (_, what) in self.sync_steps.items() if attempt_running(key)]

    def emit(self, event: str, run_id: str, agent: str, detail: str | None = None, **extra: Any) -> None:
        failed = extra.get("status") == "failed" or detail == "failed"
        if failed or _log.isEnabledFor(logging.DEBUG):
            error = extra.get("error") or {}
            _log.log(logging.WARNING if failed else logging.DEBUG, "run %s: %s %s %s%s", run_id, event, agent or "-",
                     detail or "", f" ({error.get('error_type')}: {error.get('error_message')})" if error else "",
                     extra={"run_id": run_id, "agent": agent or None, "event": event, "detail": detail})
        if self.listeners:
            data = {"event": event, "run_id": run_id, "agent": agent, "detail": detail, "at": time.time(), **extra}
            for listener in self.listeners:
                listener(data)

    # -- ownership (see _lease.py) ----------------------------------------------------------

    @property
    def owner(self) -> str:
        """This runtime's owner id (in ``runs.owner`` of the runs it runs)."""
        return self._owner.id if self._owner is not None else ""

    async def _own(self) -> str:
        """Register this runtime as an owner (once: a lock file, a lease row, a heartbeat)."""
        owner = self._owner
        assert owner is not None
        if not owner.registered:
            if self._registering is None:
                self._registering = asyncio.get_running_loop().create_task(self._register(owner), context=detached())
            registering = self._registering
            try:
                await asyncio.shield(registering)
            except Exception:
                if self._registering is registering:
                    self._registering = None  # the next run tries again
                raise
        return owner.id

    async def _register(self, owner: Owner) -> None:
        owner.lock()
        await self.write(owner.insert)
        owner.start(asyncio.get_running_loop())

    def owned_elsewhere(self, owner: str | None) -> bool:
        """Whether a live owner other than this runtime holds what names ``owner``."""
        return owner != self.owner and alive(self.journal.db, self.journal.path, owner)

    def runner_of(self, owner: str | None) -> str | None:
        """Who runs what ``owner`` names ('pid P on HOST'), if a live process other than this runtime does."""
        return describe(self.journal.db, owner) if self.owned_elsewhere(owner) else None

    def _fenced(self, live: _LiveRun, op: Op) -> Op:
        """``op``, refused (LostRun) if another process took the run over meanwhile."""
        owner, run_id = self.owner, live.run_id

        def fenced(db: sqlite3.Connection) -> Any:
            if live.lost:  # what is still in flight of a lost run writes nothing (it runs elsewhere, or anew)
                raise LostRun(f"run {run_id!r} is no longer run by this engine")
            check_run(db, run_id, owner, live.finished_here)
            return op(db)

        return fenced

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name, context=detached())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- writing ----------------------------------------------------------------------------

    async def write(self, op: Op) -> Any:
        """Run ``op`` in the next group commit and wait until it is durable."""
        assert self._committer is not None
        with internal():
            return await self._committer.submit(op)

    async def write_for(self, live: _LiveRun, agent: str, op: Op) -> Any:
        """``write`` on behalf of an activation's code: if the journal cannot be written the run
        stops (see ``_break``) and the code gets RunAborted, which ``except Exception`` cannot swallow."""
        try:
            return await self.write(self._fenced(live, op))
        except Exception as exc:
            self._break(live, exc, agent)
            raise RunAborted() from exc

    def write_soon(self, op: Op) -> asyncio.Future[Any]:
        """Queue ``op`` for the next group commit; the future is done once it is durable."""
        assert self._committer is not None
        with internal():
            return self._committer.submit(op)

    def write_later(self, op: Op) -> None:
        """Like ``write``, without waiting (the commit still happens within this loop turn)."""
        assert self._committer is not None
        self._committer.submit(op).add_done_callback(lambda f: f.cancelled() or f.exception())

    async def apply(self, live: _LiveRun, event: Event, extra: list[Op] | None = None) -> None:
        """Hand ``event`` to the run's engine, persist it with its effects, then carry out its commands."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def then() -> None:
            if not done.done():
                done.set_result(None)

        self.apply_soon(live, event, extra, then)
        with internal():
            await done

    def apply_soon(self, live: _LiveRun, event: Event, extra: list[Op] | None, then: Callable[[], None],
                   on_commit: Callable[[], None] | None = None) -> None:
        """``apply`` without waiting: the commands are carried out once the event has committed,
        and then ``then()`` is called (also when the run stopped or broke instead); ``on_commit()``
        only when the event committed."""
        if live.broken is not None or live.engine.finished:
            then()
            return
        try:
            commands = live.engine.handle(event)
            touched = list(live.engine.touched)
            ops = [*(extra or []), *self._projection(live, event, commands)]
            data = encode(event)
        except Exception as exc:  # a bug in roost or in a when=/map= it could not attribute: never strand the run
            self._break(live, exc, _agent_of(live, event))
            then()
            return
        live.seq += 1
        seq, run_id = live.seq, live.run_id

        owner = self.owner

        def op(db: sqlite3.Connection) -> None:
            check_run(db, run_id, owner)
            Journal.append_event(db, run_id, seq, data)
            for o in ops:
                o(db)

        def committed(fut: asyncio.Future[Any]) -> None:
            try:
                if fut.cancelled() or self._journal is None:
                    return  # the runtime closed: the next process picks up from what committed
                if fut.exception() is not None:
                    self._break(live, fut.exception() or RuntimeError("commit failed"), _agent_of(live, event))
                    return
                self._execute(live, event, commands)
                if on_commit is not None:
                    on_commit()
                if isinstance(event, PromiseResolved):  # an approval decided: the output is final
                    for aid in touched:
                        agent, status = live.engine.status_of(aid) or ("", "pending")
                        self.emit("finished", live.run_id, agent, aid, status=status, error=None)
            except Exception as exc:
                self._break(live, exc, _agent_of(live, event))
            finally:
                then()

        assert self._committer is not None
        self._committer.submit(op).add_done_callback(committed)

    def _projection(self, live: _LiveRun, event: Event, commands: list[Command]) -> list[Op]:
        """The record of the activations and the run that ``event`` changed (for ``get``)."""
        engine, run_id, ops = live.engine, live.run_id, []
        finished = event.activation if isinstance(event, ActivationFinished) else None
        for aid in engine.touched:
            status = (engine.status_of(aid) or ("", "pending"))[1]
            if aid != finished:
                ops.append(_op(Journal.update_activation, run_id, aid, status))
            name = engine.approval_of(aid) if status == "waiting" else None
            if name is not None:
                ops.append(_op(Journal.record, (run_id, aid, "approval", "promise", name, "waiting", None, 0,
                                                time.time(), None)))
            elif status in ("completed", "rejected", "cancelled") and isinstance(event, PromiseResolved):
                ops.append(_op(Journal.finish_entry, run_id, aid, "approval", json.dumps(event.value)))
        for c in commands:
            if isinstance(c, StartActivation):
                ops.append(_op(Journal.insert_activation, run_id, c.activation))
        if engine.finished or engine.error is not None or isinstance(event, RunStarted):
            # The run's row changes when it starts, fails or finishes; in between the events say it all.
            error = json.dumps(engine.error.to_json()) if engine.error else None
            ops.append(_op(Journal.update_run, run_id, pending=engine.open, activations=engine.count,
                           status=engine.status, error=error))
        return ops

    def _execute(self, live: _LiveRun, event: Event, commands: list[Command]) -> None:
        if isinstance(event, PromiseResolved):
            self._wake(live, event.name, event.value)
        for c in commands:
            if isinstance(c, StartActivation):
                self._start(live, c.activation)
            elif isinstance(c, AwaitApproval):
                self.emit("waiting", live.run_id, (live.engine.status_of(c.activation) or ("", ""))[0], c.name)
                self._poll(live)
            elif isinstance(c, DeliverReply):
                self._wake(live, c.key, c.reply)
            elif isinstance(c, AbortActivations):
                self._abort(live, c.ids)
            elif isinstance(c, FinishRun):
                live.finished_here = True
                self._trace_run(live, c)
                self._finish(live)

    def _trace_run(self, live: _LiveRun, end: FinishRun) -> None:
        """The run's span: made by the process that committed the run's end, once."""
        if not (live.app.tracing and _tracing.enabled()):
            return
        row = self.journal.run_row(live.run_id)
        start = float(row["created_at"]) if row is not None else time.time()
        error = f"{end.error.error_type}: {end.error.error_message}" if end.error else None
        _tracing.run_span(live.app.name, live.run_id, end.status, start, error=error)

    def _break(self, live: _LiveRun, exc: BaseException, agent: str | None = None) -> None:
        """The journal cannot be written, or roost itself failed: the run stops here, failed in this
        process (waiters get a RunFailedError naming the cause). On disk it is unfinished and
        resumes from its last committed event (``roost runs resume``) once the cause is fixed."""
        if live.broken is not None:
            return
        live.lost = isinstance(exc, LostRun)
        message = f"run {live.run_id!r} stopped in this process: {type(exc).__name__}: {exc}"
        live.broken = ErrorInfo(agent or "-", None, 1, type(exc).__name__, message)
        live.aborted.set()
        for h in live.timers.values():
            h.cancel()
        self._finish(live)
        if live.lost:
            self._spawn(self._retake(live), f"roost:retake:{live.run_id}")
        else:  # still this runtime's: _watch_cancels carries out a cancel requested for it
            self._stopped[live.run_id] = live

    async def _retake(self, live: _LiveRun) -> None:
        """After a LostRun: if the run is still this runtime's (only an entity it held was taken
        over), run it again from its journal; the activation whose outcome was refused runs anew."""
        row = self.journal.run_row(live.run_id)
        if row is not None and row["status"] == "running" and row["owner"] == self.owner:
            await self._adopt(live.app, live.run_id)

    def _finish(self, live: _LiveRun) -> None:
        live.done.set()
        live.aborted.set()
        for fut in live.waiters.values():
            if not fut.done():
                fut.set_result(_ABORTED)
        if live.poller is not None:
            live.poller.cancel()
        self._live.pop(live.run_id, None)
        self.emit("run", live.run_id, "", live.engine.status)

    # -- runs -------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> bool:
        app, run_id = submission.app, submission.run_id
        self.register(app, self.app_refs.get(app.name))
        live = _LiveRun(app, run_id, RunEngine(app, run_id))
        started = RunStarted(tuple(submission.entries))
        commands = live.engine.handle(started)
        live.seq = 1
        ops = self._projection(live, started, commands)
        data, ref = encode(started), self.app_refs.get(app.name)
        owner = await self._own()

        def op(db: sqlite3.Connection) -> bool:
            created = Journal.insert_run(db, run_id=run_id, app=app.name, fingerprint=app.fingerprint, app_ref=ref,
                                         input_json=submission.input_json, input_hash=submission.input_hash,
                                         owner=owner)
            if created:
                Journal.append_event(db, run_id, 1, data)
                for o in ops:
                    o(db)
            return created

        if await self.write(op):
            self._live[run_id] = live
            self._execute(live, started, commands)
            return True
        row = self.journal.run_row(run_id)
        assert row is not None
        if row["app"] != app.name or row["input_hash"] != submission.input_hash:
            raise RunConflictError(
                f"run id {run_id!r} is already used by a run of app {row['app']!r} with a different input; "
                "a run id names one run: use a new id for new input",
                run_id=run_id,
            )
        if row["status"] == "running" and run_id not in self._live and not self.owned_elsewhere(row["owner"]):
            await self._adopt(app, run_id)
        return False  # else wait() follows the run, and takes it over if its owner stops

    async def resume(self, app: CompiledApp, run_id: str) -> None:
        self.register(app, self.app_refs.get(app.name))
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row["status"] in FINISHED or run_id in self._live:
            return
        _same_version(app, row)
        if not self.owned_elsewhere(row["owner"]):
            await self._adopt(app, run_id)
        # else another live process runs it: wait() follows it, and takes it over if that process stops

    async def _adopt(self, app: CompiledApp, run_id: str) -> bool:
        """Take over an unfinished run whose owner is gone: rebuild its engine from the events,
        rerun what was in flight. False if it finished, or another live process holds it."""
        row = self.journal.run_row(run_id)
        assert row is not None
        _same_version(app, row)
        owner, path = await self._own(), self.journal.path
        if run_id in self._live:
            return True
        if not await self.write(lambda db: claim_run(db, path, run_id, owner)):
            return False
        if run_id in self._live:  # adopted meanwhile, by another caller in this runtime
            return True
        live = _LiveRun(app, run_id, RunEngine(app, run_id))
        for data in self.journal.events(run_id):
            live.engine.handle(decode(data))
            live.seq += 1
        self._live[run_id] = live
        self._stopped.pop(run_id, None)
        requested = self.journal.cancel_requests([run_id])
        if run_id in requested and not live.engine.ending:
            # Asked while no process ran it (or while it was stopped here by a fault): carried out
            # before anything restarts, so no step that was in flight starts again after the cancel.
            await self._cancel_live(live, requested[run_id])
            if live.broken is not None:
                return True  # stopped again by a fault (in _stopped): nothing restarts
        if live.engine.ending:
            live.aborted.set()
        for spec in live.engine.pending():
            self._start(live, spec, replay=True)
        if live.engine.waiting():
            self._poll(live)
        return True

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            live = self._live.get(run_id)
            if live is not None:
                try:
                    await asyncio.wait_for(live.done.wait(), _left(deadline))
                except TimeoutError:
                    raise self._timeout(run_id, timeout) from None
                if live.broken is None:
                    return await self.get(run_id)
                if not live.lost:
                    return self._broken_record(await self.get(run_id), live.broken)
                # another process took it over: follow it there
            if await self._follow(run_id, deadline):
                return await self.get(run_id)
            stopped = self._stopped.get(run_id)
            if run_id not in self._live and stopped is not None and stopped.broken is not None:
                # taken over here, and stopped at once by a fault: its end in this process
                return self._broken_record(await self.get(run_id), stopped.broken)
            if deadline is not None and time.monotonic() > deadline:
                raise self._timeout(run_id, timeout)

    async def _follow(self, run_id: str, deadline: float | None) -> bool:
        """Follow a run another process runs, through the journal: True once it finished, False
        once this runtime took it over (its owner stopped: died, or let its lease expire)."""
        while True:
            row = self.journal.run_row(run_id)
            if row is None:
                raise RunNotFoundError(run_id)
            if row["status"] in FINISHED:
                return True
            app = self.apps.get(row["app"])
            if (app is not None and app.fingerprint == row["fingerprint"] and not self.owned_elsewhere(row["owner"])
                    and await self._adopt(app, run_id)):
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(_FOLLOW_POLL)

    @staticmethod
    def _timeout(run_id: str, timeout: float | None) -> RunTimeoutError:
        return RunTimeoutError(f"run {run_id!r} did not finish within {timeout} s; it is not cancelled: it goes on "
                               f"when resumed (roost runs resume {run_id})", run_id=run_id)

    @staticmethod
    def _broken_record(record: RunRecord, error: ErrorInfo) -> RunRecord:
        record.status = "failed"
        record.error = error.to_json()
        return record

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        return [
            RunSummary(r["run_id"], r["app"], self._status(r["run_id"], r["status"]), r["created_at"], r["finished_at"],
                       "local", str(r["fingerprint"])[:8])
            for r in self.journal.list_runs(limit)
        ]

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Delete the runs that finished more than ``older_than`` seconds ago, in batches of
        ``PRUNE_BATCH`` runs, each one transaction of the group commit (runs go on in between)."""
        cutoff = time.time() - older_than
        if dry_run:
            return PruneReport(count_prunable(self.journal.db, cutoff))
        await self.write(ensure_prune_index)

        def batch(db: sqlite3.Connection) -> int:
            ids = prunable(db, cutoff, PRUNE_BATCH)
            if ids:
                delete_runs(db, ids)
            return len(ids)

        total = 0
        while (n := await self.write(batch)) > 0:
            total += n
            await asyncio.sleep(0)
        return PruneReport(total)

    def _status(self, run_id: str, status: str) -> str:
        return "waiting" if status == "running" and self.journal.waiting_on(run_id) else status

    async def get(self, run_id: str) -> RunRecord:
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        steps: dict[str, list[StepRecord]] = {}
        for j in self.journal.journal_of(run_id):
            steps.setdefault(j["activation"], []).append(
                StepRecord(_position(j["position"]), j["kind"], j["name"], j["status"], j["attempts"], j["started_at"],
                           j["finished_at"], json.loads(j["value"]) if j["value"] is not None else None)
            )
        running = row["status"] == "running"
        acts = [
            ActivationRecord(
                id=a["id"], agent=a["target"], kind=a["kind"], cause=a["cause"],
                # 'pending' with a start time: it began and has no outcome yet (see Journal.mark_started)
                status="running" if running and a["status"] == "pending" and a["started_at"] else a["status"],
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

    # -- cancel -------------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row["status"] == "cancelled":
            return
        if row["status"] in FINISHED:
            raise CancelError(f"run {run_id!r} is {row['status']}: there is nothing to cancel", run_id=run_id)
        # Durable first: the process that runs it (this one, another, or the next to resume it) applies it.
        recorded = False
        try:
            await self.write(lambda db: Journal.request_cancel(db, run_id, reason))
            recorded = True
            await self._carry_out_cancel(row, reason)
        except RoostError:  # JournalError (the journal cannot be written), RunConflictError, ...
            raise
        except Exception as exc:  # a bug in roost: still a typed error, saying where the cancel stands
            where = ("it is recorded: the process that runs the run, or the next to take it over, carries it out"
                     if recorded else "nothing was recorded: the run goes on as it was")
            raise CancelError(f"cancelling run {run_id!r} failed ({type(exc).__name__}: {exc}); {where}",
                              run_id=run_id) from exc

    async def _carry_out_cancel(self, row: sqlite3.Row, reason: str | None) -> None:
        run_id = row["run_id"]
        live = self._live.get(run_id)
        if live is not None:
            await self._cancel_live(live, reason)
            return
        if self.owned_elsewhere(row["owner"]):
            return  # its owner sees the request within _CANCEL_POLL
        app = self.apps.get(row["app"])
        if app is not None and app.fingerprint == row["fingerprint"]:
            if await self._adopt(app, run_id):  # and cancels it (the request is in the journal)
                return
        # No process runs it and none here has its code: nothing of it is in flight; it ends here.
        data, owner = encode(CancelRequested(reason or "cancelled")), row["owner"]
        seq = self.journal.last_seq(run_id) + 1
        if await self.write(lambda db: Journal.cancel_unowned(db, run_id, seq, data, owner)):
            self.emit("run", run_id, "", "cancelled")
        # else another process took it over meanwhile: it found the request, and carries it out

    async def _cancel_live(self, live: _LiveRun, reason: str | None) -> None:
        """Cancel a run this process drives: nothing new starts, waits are dropped, async steps
        are cancelled, a sync step finishes (and is journaled); then the run ends ``cancelled``."""
        if live.cancelling or live.done.is_set():
            return
        live.cancelling = True
        try:
            await self.apply(live, CancelRequested(reason or "cancelled"))
        finally:  # also when the run broke meanwhile: its async steps must not go on for ever
            for task in list(live.steps):
                task.cancel()

    async def _watch_cancels(self) -> None:
        """Carry out the cancels requested in the journal (by another process) for the runs this
        runtime runs, and for those it stopped after a fault (``_stopped``): a recorded cancel is
        never left undone while its run's owner lives."""
        while True:
            await asyncio.sleep(_CANCEL_POLL)
            try:
                ids = [rid for rid, live in self._live.items() if not live.cancelling]
                ids += [rid for rid in self._stopped if rid not in self._live]
                for rid, reason in (self.journal.cancel_requests(ids) if ids else {}).items():
                    live = self._live.get(rid)
                    if live is not None:
                        await self._cancel_live(live, reason)
                    elif rid in self._stopped:
                        await self._cancel_stopped(rid)
            except Exception:  # the journal is busy or closing: look again next time
                _log.warning("looking for cancel requests failed", exc_info=True)

    async def _cancel_stopped(self, run_id: str) -> None:
        """Take a run stopped here by a fault back from its journal and cancel it (``_adopt``
        applies the request). While the journal still fails this raises, and it is tried again."""
        app = self._stopped[run_id].app
        row = self.journal.run_row(run_id)
        if row is None or row["status"] != "running" or row["owner"] != self.owner:
            del self._stopped[run_id]  # it ended, or another process took it over
            return
        if not await self._adopt(app, run_id):
            self._stopped.pop(run_id, None)

    # -- promises and replies -----------------------------------------------------------------

    async def resolve(self, run_id: str, name: str, value: Any) -> None:
        row = self.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row["status"] in FINISHED:
            raise PromiseError(f"run {run_id!r} is {row['status']}: nothing waits for {name!r}", run_id=run_id)
        if name in self.journal.promises(run_id):
            raise PromiseError(f"{name!r} of run {run_id!r} is resolved already", run_id=run_id)
        live = self._live.get(run_id)
        app = live.app if live is not None else self.apps.get(row["app"])
        if app is not None and app.fingerprint != row["fingerprint"]:
            app = None  # another version of the app: its agents say nothing about this run
        problem = resolution_problem(app, name, value, self.journal.waiting_on(run_id),
                                     self.journal.waiting_on(run_id, approvals=True))
        if problem is not None:
            raise PromiseError(f"run {run_id!r}: {problem}", run_id=run_id)
        raw = dumps(value, what=f"value resolving {name!r} of run {run_id!r}")
        if not await self.write(lambda db: db.execute("INSERT OR IGNORE INTO promises VALUES(?,?,?,?)",
                                                      (run_id, name, raw, time.time())).rowcount == 1):
            raise PromiseError(f"{name!r} of run {run_id!r} is resolved already", run_id=run_id)
        if live is not None:  # else the process that runs it picks it up from the journal
            await self.apply(live, PromiseResolved(name, json.loads(raw)))

    def _poll(self, live: _LiveRun) -> None:
        """While a run waits, pick up promises another process resolved in the journal."""
        if live.poller is None or live.poller.done():
            live.poller = self._spawn(self._poll_loop(live), f"roost:poll:{live.run_id}")

    async def _poll_loop(self, live: _LiveRun) -> None:
        try:
            while not live.done.is_set():
                for name, raw in self.journal.promises(live.run_id).items():
                    if name not in live.engine.promises:
                        await self.apply(live, PromiseResolved(name, json.loads(raw)))
                await asyncio.sleep(_PROMISE_POLL)
        except Exception as exc:
            self._break(live, exc)

    def _wake(self, live: _LiveRun, key: str, value: Any) -> None:
        fut = live.waiters.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    async def _wait_for(self, live: _LiveRun, key: str, ready: Callable[[], Any]) -> Any:
        value = ready()
        if value is not None:
            return value.value if isinstance(value, _Box) else value
        fut = live.waiters.get(key)
        if fut is None or fut.done():
            fut = live.waiters[key] = asyncio.get_running_loop().create_future()
        result = await self.wait_abortable(live, fut, None)
        if result is _ABORTED:
            raise RunAborted()
        return result

    async def wait_promise(self, live: _LiveRun, name: str) -> Any:
        self._poll(live)
        return await self._wait_for(live, name, lambda: _Box(live.engine.promises[name])
                                    if name in live.engine.promises else None)

    async def wait_reply(self, live: _LiveRun, key: str) -> Reply:
        reply: Reply = await self._wait_for(live, key, lambda: live.engine.replies.get(key))
        return reply

    async def wait_abortable(self, live: _LiveRun, fut: asyncio.Future[Any] | None, delay: float | None) -> Any:
        """Wait for ``fut`` (or ``delay`` seconds); raises RunAborted if the run ends meanwhile."""
        if live.aborted.is_set():
            raise RunAborted()
        self._yield_slot()  # a waiting activation does not count against max_running
        with internal():
            aborted = asyncio.ensure_future(live.aborted.wait())
            waits: set[asyncio.Future[Any]] = {aborted} if fut is None else {aborted, fut}
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                aborted.cancel()
                self._running += 1  # back, even past the limit: it must not wait behind new work
        if fut is not None and fut.done():
            value = fut.result()
            return value.value if isinstance(value, _Box) else value
        if live.aborted.is_set():
            raise RunAborted()
        return None

    # -- activations ------------------------------------------------------------------------

    def _start(self, live: _LiveRun, spec: Activation, *, replay: bool = False) -> None:
        # A run that is ending starts nothing: a delayed activation ends (cancelled) at once,
        # rather than holding the run open until its time.
        delay = (spec.not_before - time.time()) if spec.not_before and not live.engine.ending else 0.0
        if delay > 0:
            live.timers[spec.id] = asyncio.get_running_loop().call_later(
                delay, lambda: self._admit(live, spec, replay))
        else:
            self._admit(live, spec, replay)

    def _admit(self, live: _LiveRun, spec: Activation, replay: bool) -> None:
        """Start the activation now, or queue it while ``max_running`` are in flight: a fan-out of
        100k items holds 100k small specs in memory, not 100k tasks."""
        live.timers.pop(spec.id, None)
        if self._running >= self.max_running:
            self._queue.push(live, spec, replay)
            return
        self._running += 1
        task = self._spawn(self._activate(live, spec, replay), f"roost:{spec.id}")
        task.add_done_callback(self._next_queued)

    def _next_queued(self, _: asyncio.Task[Any]) -> None:
        self._yield_slot()

    def _yield_slot(self) -> None:
        """An activation stops running (it ended, or waits on a timer, a promise or a reply):
        start queued ones while there is room. Waits never hold a slot, so activations that
        wait on each other (calls, promises) cannot starve the queue."""
        self._running -= 1
        while self._queue and self._running < self.max_running:
            self._admit(*self._queue.pop())

    def _abort(self, live: _LiveRun, ids: tuple[str, ...]) -> None:
        live.aborted.set()
        for aid in ids:
            handle = live.timers.pop(aid, None)
            if handle is not None:  # a delayed message that never started
                handle.cancel()
                self._spawn(self.apply(live, ActivationFinished(aid, "cancelled"), [_cancelled(live, aid)]),
                            f"roost:cancel:{aid}")

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

    async def _activate(self, live: _LiveRun, spec: Activation, replay: bool) -> None:
        try:
            key = key_of(live.app, spec, live.run_id)
        except Exception as exc:  # a keyed_by function failed: the activation fails, naming it
            await self.apply(live, failed_activation(spec, None, 1, exc))
            return
        ekey = (spec.agent, key)
        lock = self._lock(ekey)
        released = False
        holder: str | None = None  # this activation's hold on a keyed entity in the journal
        owner = self.owner

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                if holder is not None and self._committer is not None:  # no-op if the outcome dropped it
                    self.write_later(_op(drop_entity, spec.agent, key, owner, holder))
                lock.release()
                self._unlock(ekey)

        try:
            await lock.acquire()
        except BaseException:
            self._unlock(ekey)
            raise
        try:
            if shared_entity(live.app, spec) and self.journal.path != ":memory:":
                # Other processes may run activations of this entity: one at a time, through the journal.
                holder = await self._take_entity(live, spec.agent, key, f"{live.run_id}/{spec.id}")
            # The entity stays locked until the outcome (with its state writes) has committed;
            # the task itself ends as soon as the outcome is handed over.
            await self._run_activation(live, spec, key, replay, release, holder)
        except Exception as exc:  # roost's own code failed around the activation: never strand the run
            self._break(live, exc, spec.agent)
            release()
        except BaseException:
            release()
            raise

    async def _take_entity(self, live: _LiveRun, agent: str, key: str, holder: str) -> str | None:
        """Hold the entity in the journal for ``holder``, waiting while another process's activation
        holds it (None if the run ends meanwhile)."""
        owner, path, backoff = self.owner, self.journal.path, delays(0.01, 0.5)
        while live.broken is None and not live.engine.ending:
            if await self.write(lambda db: take_entity(db, path, agent, key, owner, holder)):
                return holder
            await asyncio.sleep(next(backoff))
        return None

    async def _run_activation(self, live: _LiveRun, spec: Activation, key: str, replay: bool,
                              release: Callable[[], None], holder: str | None = None) -> None:
        if live.engine.ending or live.broken is not None:
            self.apply_soon(live, ActivationFinished(spec.id, "cancelled"), [_cancelled(live, spec.id)], release)
            return
        started = time.time()
        if self._committer is not None:  # for readers of the journal (roost ui, runs show): it runs now
            self.write_later(_op(Journal.mark_started, live.run_id, spec.id, started))
        entries = self.journal.entries(live.run_id, spec.id) if replay else {}
        ctx = LocalContext(self, live, spec, key, entries)
        self.emit("started", live.run_id, spec.agent, spec.id)
        event = await outcome_of(live.app, ctx, spec)
        error = json.dumps(event.error.to_json()) if event.error else None
        output = json.dumps(event.output) if event.output is not None else None
        status = "waiting" if event.status == "completed" and live.app.specs[spec.agent].approval else event.status
        # A failed activation shows the attempts its error names (those of the failing step).
        run_id, writes, attempts = live.run_id, ctx.state.writes, event.error.attempts if event.error else ctx.attempts
        extra: list[Op] = [*ctx.deferred, _op(Journal.update_activation, run_id, spec.id, status, output=output,
                                              error=error, attempts=attempts, started_at=started)]
        if writes and event.status == "completed":
            extra.append(_op(Journal.write_state, spec.agent, key, writes))
        if holder is not None:  # the state read and written is the entity's only while it is held
            owner = self.owner
            extra = [_op(check_entity, spec.agent, key, owner, holder), *extra,
                     _op(drop_entity, spec.agent, key, owner, holder)]

        def then() -> None:
            release()
            if status != "waiting":
                self.emit("finished", live.run_id, spec.agent, spec.id, status=event.status,
                          error=event.error.to_json() if event.error else None)

        def traced() -> None:
            # Once its outcome is journaled: an activation cut short by a crash has no span, and
            # the one that reruns after it (replaying its journal) has exactly one.
            if live.app.tracing:
                err = f"{event.error.error_type}: {event.error.error_message}" if event.error else None
                _tracing.activation_span(live.run_id, spec.id, spec.agent, spec.cause, status, started,
                                         attempts=attempts, error=err)

        self.apply_soon(live, event, extra, then, traced)


class _Queue:
    """Activations waiting to start, in order: three parallel deques rather than a tuple per
    entry, so a queue of 100k items adds no objects for the garbage collector to walk."""

    def __init__(self) -> None:
        self._runs: collections.deque[_LiveRun] = collections.deque()
        self._specs: collections.deque[Activation] = collections.deque()
        self._replay: collections.deque[bool] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self._specs)

    def push(self, live: _LiveRun, spec: Activation, replay: bool) -> None:
        self._runs.append(live)
        self._specs.append(spec)
        self._replay.append(replay)

    def pop(self) -> tuple[_LiveRun, Activation, bool]:
        return self._runs.popleft(), self._specs.popleft(), self._replay.popleft()

    def clear(self) -> None:
        self._runs.clear()
        self._specs.clear()
        self._replay.clear()


class _Box:
    """A resolved value that may itself be None."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _agent_of(live: _LiveRun, event: Event) -> str | None:
    aid = getattr(event, "activation", None) or getattr(event, "sender", None)
    known = live.engine.status_of(aid) if isinstance(aid, str) else None
    return known[0] if known is not None else None


def _same_version(app: CompiledApp, row: sqlite3.Row) -> None:
    if row["fingerprint"] != app.fingerprint:
        raise RunConflictError(
            f"run {row['run_id']!r} was started by a different version of app {app.name!r} (its agents, contracts "
            "or wiring changed); finish it with the code that started it",
            run_id=row["run_id"],
        )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a release that failed: the lease runs out instead


def _cancelled(live: _LiveRun, aid: str) -> Op:
    """The record of an activation that ends cancelled without having run (the projection leaves
    the finished activation's record to its outcome)."""
    return _op(Journal.update_activation, live.run_id, aid, "cancelled", attempts=0)


def _op(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Op:
    return lambda db: fn(db, *args, **kwargs)


def _position(value: Any) -> int | str:
    text = str(value)
    return int(text) if text.isdigit() else text
