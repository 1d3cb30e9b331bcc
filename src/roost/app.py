"""App: a validated set of agents, and the calls that run it (run/arun/start/resolve)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic import BaseModel

from ._codec import adapter, fits, type_name
from ._config import Duration, load_settings, parse_retention
from ._graph import CompiledApp
from ._ids import checked_run_id, run_id_or_new
from .agent import Agent
from .errors import ConfigError, InputValidationError, RunFailedError, UsageError
from .result import FINISHED, RunRecord, RunResult
from .runtime import DurableRuntime, Submission, get_runtime
from .runtime._retry import checked_timeout

Listener = Callable[[dict[str, Any]], None]
_APPROVAL_POLL = 0.05  # seconds; runtimes without in-process events (prod) are polled this often


class RunHandle:
    """A started run: ``await handle.result()``; ``await handle.approval()`` for what it waits on."""

    def __init__(self, app: App, runtime: DurableRuntime, run_id: str) -> None:
        self.app, self._runtime, self.run_id = app, runtime, checked_run_id(run_id)

    async def result(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> RunResult:
        timeout = checked_timeout(timeout, what=f"run {self.run_id!r}: handle.result timeout")
        record = await self._runtime.wait(self.run_id, timeout)
        return self.app._result(record, raise_on_failure)

    async def record(self) -> RunRecord:
        return await self._runtime.get(self.run_id)

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run (see ``App.acancel``); ``await handle.result()`` then shows ``cancelled``."""
        await self._runtime.cancel(self.run_id, reason)

    async def approval(self, timeout: float | None = 30.0) -> str | None:
        """Wait until the run waits for an approval or promise and return its name (None if the
        run finished first)."""
        timeout = checked_timeout(timeout, what=f"run {self.run_id!r}: handle.approval timeout")
        event = asyncio.Event()

        def listener(data: dict[str, Any]) -> None:
            if data["run_id"] == self.run_id and data["event"] in ("waiting", "finished"):
                event.set()

        listeners: list[Listener] = getattr(self._runtime, "listeners", [])
        listeners.append(listener)
        try:
            async with asyncio.timeout(timeout):
                names = await self._runtime.await_waiting(self.run_id)  # blocks where the backend can
                if names is not None:
                    return names[0] if names else None  # [] once the run has finished
                while True:
                    rec = await self._runtime.get(self.run_id)
                    if rec.waiting_on:
                        return rec.waiting_on[0]
                    if rec.status in FINISHED:
                        return None
                    event.clear()
                    try:  # runtimes without in-process events or a blocking wait are polled
                        await asyncio.wait_for(event.wait(), _APPROVAL_POLL)
                    except TimeoutError:
                        pass
        finally:
            listeners.remove(listener)


class _Binding:
    """The runtime an App uses in one event loop, and its closing when that loop shuts down."""

    def __init__(self, runtime: DurableRuntime, opening: asyncio.Task[None]) -> None:
        self.runtime = runtime
        self.opening = opening
        self._closer: AsyncGenerator[None, None] | None = None

    async def close_with(self, loop: asyncio.AbstractEventLoop,
                         unbind: Callable[[asyncio.AbstractEventLoop, _Binding], Awaitable[None]]) -> None:
        """Close the runtime when ``loop`` shuts down, unless ``close`` came first.

        The loop keeps the async generators it has started and closes those still suspended
        when it shuts down (``asyncio.run`` and ``asyncio.Runner`` do, after cancelling the
        remaining tasks), while it can still run the runtime's ``close``. Without this, each
        ``asyncio.run(app.arun(...))`` left a runtime open: a thread and a database connection."""

        async def closer() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                await unbind(loop, self)

        self._closer = closer()
        await self._closer.__anext__()  # now the loop knows it

    async def close(self) -> None:
        if self._closer is not None:
            await self._closer.aclose()


class App:
    """Agents wired together, validated when built (``DefinitionError`` names what is wrong).

    ``durability``: ``process`` (default), ``machine`` or ``memory`` for the local runtime;
    ``journal``: its SQLite file (default ``$ROOST_JOURNAL`` or ``.roost/roost.db``).
    ``entry``: the agents a run input goes to (default: those reacting to nothing, and loop heads).
    ``max_activations``: per-run limit that stops a runaway loop with a clear error.
    ``retention``: how long the local runtime keeps finished runs before pruning them (``"7d"``,
    ``"12h"``, seconds, a timedelta, or ``"forever"``; default: the ``retention`` setting,
    ``ROOST_RETENTION``, else 7 days). On Restate and Temporal the server keeps runs, for the
    ``retention`` setting (docs/operations.md, Retention).
    ``tracing``: emit OpenTelemetry spans of runs, agents, steps, model and tool calls through the
    global tracer provider (needs ``roost[otel]``; docs/observability.md). ``False``: none.
    An App may be used from several threads and event loops: each loop gets its own runtime.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        *,
        name: str = "app",
        journal: str | os.PathLike[str] | None = None,
        durability: str = "process",
        max_activations: int = 1000,
        entry: Sequence[Agent] | None = None,
        runtime: DurableRuntime | None = None,
        retention: Duration | None = None,
        tracing: bool = True,
    ) -> None:
        self.compiled = CompiledApp(name, agents, max_activations, entry)
        self.compiled.tracing = bool(tracing)
        self.name = name
        self.journal = journal
        self.durability = durability
        if retention is not None:
            parse_retention(retention, "App(retention=...)")  # a wrong value fails here, not at the first run
        self.retention = retention
        self._given_runtime = runtime
        self._bound: dict[asyncio.AbstractEventLoop, _Binding] = {}
        self._guard = threading.Lock()  # over _bound: threads each bind their own loop
        self.listeners: list[Listener] = []
        caller = inspect.stack(context=0)[1].filename
        self.app_ref = os.path.abspath(caller) if os.path.exists(caller) else None

    @property
    def agents(self) -> list[str]:
        return list(self.compiled.specs)

    # -- runtime selection ------------------------------------------------------------------

    def _new_runtime(self, mode: str | None, *, resume: bool = True) -> DurableRuntime:
        mode = mode or os.environ.get("ROOST_MODE") or "local"
        if mode == "local":
            name = "local"
        elif mode == "prod":
            name = load_settings().runtime
        else:
            raise ConfigError(f"mode must be 'local' or 'prod', got {mode!r}")
        options: dict[str, Any] = {}
        if name == "local":
            options = {"path": self.journal, "durability": self.durability, "resume": resume,
                       "retention": self.retention}
        runtime = get_runtime(name, **options)
        self._attach(runtime)
        return runtime

    def _attach(self, runtime: DurableRuntime) -> None:
        register = getattr(runtime, "register", None)
        if register is not None:
            register(self.compiled, self.app_ref)
        runtime_listeners: list[Listener] | None = getattr(runtime, "listeners", None)
        if runtime_listeners is not None and self._emit not in runtime_listeners:
            runtime_listeners.append(self._emit)

    def _emit(self, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(data)

    async def runtime(self, mode: str | None = None, *, resume: bool = True) -> DurableRuntime:
        """The runtime serving this app in the running event loop (opened on first use).

        Each event loop (so each thread running one) gets a runtime of its own: a runtime's
        tasks, futures and database connection belong to one loop. It is closed by ``aclose``
        in that loop, or else when the loop shuts down (``asyncio.run`` ends).

        On open it picks up this app's unfinished runs whose process died (``resume=False``
        leaves them alone: the one-shot ``run``/``resolve`` calls do that)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            bound = self._bound.get(loop)
            fresh = bound is None
            if bound is None:
                self._forget_closed_loops()
                bound = self._bound[loop] = self._bind(loop, mode, resume)
        if fresh:
            await bound.close_with(loop, self._unbind)
        await asyncio.shield(bound.opening)
        return bound.runtime

    def _bind(self, loop: asyncio.AbstractEventLoop, mode: str | None, resume: bool) -> _Binding:
        """A runtime for ``loop`` (the caller holds ``_guard``), its open started."""
        if self._given_runtime is not None:
            for other, bound in self._bound.items():
                if bound.runtime is self._given_runtime:
                    raise ConfigError(
                        f"App {self.name!r} was given one runtime (App(runtime=...)), and it is open in another "
                        f"event loop ({other!r}); a runtime instance serves one event loop. Build the App without "
                        "runtime= to get one runtime per event loop (per thread), or await app.aclose() in the "
                        "other loop first"
                    )
            runtime = self._given_runtime
            self._attach(runtime)
        else:
            runtime = self._new_runtime(mode, resume=resume)
        # Concurrent first callers all wait for the one open (serving, registering, recovery).
        return _Binding(runtime, loop.create_task(runtime.open()))

    def _forget_closed_loops(self) -> None:
        """Drop runtimes of loops closed without shutting down their async generators (which
        would have closed them): nothing can run there any more."""
        for loop in [lp for lp in self._bound if lp.is_closed()]:
            del self._bound[loop]

    async def _unbind(self, loop: asyncio.AbstractEventLoop, bound: _Binding) -> None:
        with self._guard:
            if self._bound.get(loop) is not bound:
                return
            del self._bound[loop]
        if not bound.opening.done():
            await asyncio.gather(bound.opening, return_exceptions=True)
        await bound.runtime.close()

    async def aclose(self) -> None:
        """Close the runtime of the running event loop (runtimes of other loops are theirs to close)."""
        bound = self._bound.get(asyncio.get_running_loop())
        if bound is not None:
            await bound.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- input ------------------------------------------------------------------------------

    def submission(self, input: Any, run_id: str | None = None) -> Submission:  # noqa: A002
        """Validate ``input`` against the entry agents (InputValidationError if none accepts it).

        ``run_id`` None means a new id; an empty or blank one is refused (UsageError)."""
        run_id = run_id_or_new(run_id)
        if isinstance(input, (str, bytes)):
            try:
                input = json.loads(input)
            except json.JSONDecodeError as exc:
                raise InputValidationError(f"the run input is not valid JSON: {exc}") from None
        entries: list[tuple[str, Any]] = []
        problems: list[str] = []
        for spec in self.compiled.entries:
            if isinstance(input, BaseModel) and not fits(type(input), spec.input_type):
                problems.append(f"entry agent {spec.name!r} takes {type_name(spec.input_type)}, not {type(input).__name__}")
                continue
            try:
                value = adapter(spec.input_type).validate_python(input)
            except pydantic.ValidationError as exc:
                fields = "; ".join(
                    f"field {'.'.join(map(str, e['loc'])) or '(input)'}: {e['msg']}" for e in exc.errors(include_url=False)
                )
                problems.append(f"entry agent {spec.name!r} ({type_name(spec.input_type)}): {fields}")
                continue
            entries.append((spec.name, pydantic_core.to_jsonable_python(value)))
        if not entries:
            raise InputValidationError(
                "the run input fits no entry agent's input contract, so no run was started: " + " | ".join(problems),
                agent=self.compiled.entries[0].name if len(self.compiled.entries) == 1 else None,
                errors=problems,
            )
        canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
        return Submission(
            app=self.compiled,
            run_id=run_id,
            input_json=json.dumps(pydantic_core.to_jsonable_python(input)),
            input_hash=hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest(),
            entries=entries,
        )

    # -- running ----------------------------------------------------------------------------

    async def start(self, input: Any, run_id: str | None = None, *, mode: str | None = None) -> RunHandle:  # noqa: A002
        """Start a run (or attach to the run with this id) without waiting for it."""
        sub = self.submission(input, run_id)
        runtime = await self.runtime(mode)
        await runtime.submit(sub)
        return RunHandle(self, runtime, sub.run_id)

    async def arun(self, input: Any, run_id: str | None = None, *, mode: str | None = None,  # noqa: A002
                   timeout: float | None = None) -> RunResult:
        """Run to the end and return the result; with a known run id, return its recorded result."""
        checked_timeout(timeout, what="app.arun timeout")  # before the run starts, not after
        handle = await self.start(input, run_id, mode=mode)
        return await handle.result(timeout)

    def run(self, input: Any, run_id: str | None = None, *, mode: str | None = None,  # noqa: A002
            timeout: float | None = None) -> RunResult:
        """Blocking ``arun``; opens the runtime for this call and closes it after."""
        self._no_running_loop("run", "arun")
        if run_id is not None:  # a bad run id or timeout fails here, before a runtime opens
            checked_run_id(run_id, new_ok=True)
        checked_timeout(timeout, what="app.run timeout")

        async def once() -> RunResult:
            try:
                # Only this run (resumed if its process died): other orphans are left to a
                # long-lived runtime rather than started here and cut off when this call returns.
                await self.runtime(mode, resume=False)
                return await self.arun(input, run_id, mode=mode, timeout=timeout)
            finally:
                await self.aclose()

        return asyncio.run(once())

    async def aresolve(self, run_id: str, name: str, value: Any, *, mode: str | None = None) -> None:
        """Answer an approval (``value`` True/False) or resolve a durable promise by name.

        PromiseError if the run cannot take it: finished, resolved already, a name the run does
        not wait on and cannot wait on later, or an approval answered with something other than
        a yes or a no (see docs/runtime.md, "Promises and approvals")."""
        run_id = checked_run_id(run_id)
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"run {run_id!r}: a promise name must be a non-empty string, got {name!r}")
        await (await self.runtime(mode)).resolve(run_id, name, value)

    def resolve(self, run_id: str, name: str, value: Any, *, mode: str | None = None) -> None:
        self._no_running_loop("resolve", "aresolve")
        checked_run_id(run_id)

        async def once() -> None:
            try:
                await self.runtime(mode, resume=False)
                await self.aresolve(run_id, name, value, mode=mode)
            finally:
                await self.aclose()

        asyncio.run(once())

    async def acancel(self, run_id: str, *, reason: str | None = None, mode: str | None = None) -> None:
        """Cancel a run, on any runtime: durable at once, carried out by the process that runs it.
        Nothing new starts, waits (timers, promises, calls) are dropped, async steps are
        cancelled, a sync step already running finishes and is recorded; the run then ends
        ``cancelled`` (``handle.result()`` shows it). Cancelling a cancelled run does nothing; a
        run that finished otherwise raises CancelError; an unknown one RunNotFoundError."""
        run_id = checked_run_id(run_id)
        if reason is not None and not isinstance(reason, str):
            raise UsageError(f"run {run_id!r}: a cancel reason must be a string, got {reason!r}")
        await (await self.runtime(mode)).cancel(run_id, reason)

    def cancel(self, run_id: str, *, reason: str | None = None, mode: str | None = None) -> None:
        """``acancel`` from synchronous code."""
        self._no_running_loop("cancel", "acancel")
        checked_run_id(run_id)

        async def once() -> None:
            try:
                await self.runtime(mode, resume=False)
                await self.acancel(run_id, reason=reason, mode=mode)
            finally:
                await self.aclose()

        asyncio.run(once())

    async def aget(self, run_id: str, *, mode: str | None = None) -> RunResult:
        """The run's result as it is now (status may be running or waiting)."""
        run_id = checked_run_id(run_id)
        return self._result(await (await self.runtime(mode)).get(run_id), raise_on_failure=False)

    async def aresume(self, run_id: str, *, mode: str | None = None, timeout: float | None = None) -> RunResult:
        run_id = checked_run_id(run_id)
        timeout = checked_timeout(timeout, what=f"run {run_id!r}: app.aresume timeout")
        runtime = await self.runtime(mode)
        await runtime.resume(self.compiled, run_id)
        return self._result(await runtime.wait(run_id, timeout), raise_on_failure=True)

    def _result(self, record: RunRecord, raise_on_failure: bool) -> RunResult:
        result = RunResult(record, self.compiled)
        if raise_on_failure and record.status == "failed" and record.error:
            raise RunFailedError.from_json(record.run_id, record.error)
        return result

    @staticmethod
    def _no_running_loop(sync: str, async_: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise ConfigError(f"App.{sync}() blocks, so it cannot be called inside an event loop; use 'await app.{async_}(...)'")
