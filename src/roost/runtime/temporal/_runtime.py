"""TemporalRuntime: runs apps on a Temporal cluster (opt-in: ``ROOST_RUNTIME=temporal``)."""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import gc
import json
import logging
import threading
import time
import uuid
import weakref
import zlib
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ..._config import TemporalSettings, load_settings
from ..._graph import CompiledApp
from ...errors import (
    BackendError,
    CancelError,
    ConfigError,
    PromiseError,
    RoostError,
    RunConflictError,
    RunNotFoundError,
)
from ...result import ActivationRecord, RunRecord, StepRecord
from .._base import DurableRuntime, PruneReport, RunSummary, Submission
from .._versions import code_version
from ._activities import APP_FILES, APPS, PROCESS_QUEUES, run_step
from ._names import (
    AWAIT_WAITING,
    RECORD_QUERY,
    RESOLVE,
    RESOLVE_REFUSED,
    RESOLVE_SIGNAL,
    default_task_queue,
    entity_task_queue,
    run_workflow,
)
from ._retention import prune_note
from ._workflow import CONTINUED, EntityWorkflow, RunWorkflow

_log = logging.getLogger("roost.temporal")

STICKY_TIMEOUT = timedelta(seconds=1)
"""How long a workflow task waits for the worker that last ran the workflow before any worker of
the task queue may take it (Temporal's default is 10 s, which is how long a run would stall
after its worker was killed)."""
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=5)
"""How long a worker may take over one workflow task (roost's orchestration takes milliseconds);
a worker killed in the middle of one is noticed after this."""
RESOLVE_WAIT = 10.0
"""Seconds to wait for a worker to accept a resolution before sending it as a signal instead."""
QUERY_TIMEOUT = timedelta(seconds=5)
STARTING_WAIT = 30.0
"""Seconds ``open`` waits for a server whose frontend is not healthy yet (it has just started)."""
AWAIT_TRIES = 200
"""Times ``await_waiting`` asks again when its update was cut short by a continue-as-new."""


class TemporalRuntime(DurableRuntime):
    """Talks to a Temporal frontend; unless ``serve=False``, also runs a worker in this process
    for the registered apps (on their task queue, ``roost.<app>`` by default)."""

    name = "temporal"

    def __init__(self, *, address: str | None = None, namespace: str | None = None, task_queue: str | None = None,
                 serve: bool | None = None, resolve_wait: float = RESOLVE_WAIT, history_limit: int | None = None) -> None:
        base = load_settings().temporal
        self.resolve_wait = resolve_wait
        if history_limit is not None and (isinstance(history_limit, bool) or not isinstance(history_limit, int)
                                          or history_limit < 20):
            raise ConfigError(f"TemporalRuntime(history_limit={history_limit!r}): give a whole number of history "
                              "events of at least 20 (or None: continue as new when Temporal suggests it)")
        self.history_limit = history_limit
        self.settings = TemporalSettings(
            address=address or base.address, namespace=namespace or base.namespace,
            task_queue=task_queue or base.task_queue, serve=base.serve if serve is None else serve,
        )
        self.apps: dict[str, CompiledApp] = {}
        self._client: Client | None = None
        self._workers: list[tuple[Worker, concurrent.futures.Future[None]]] = []
        self._host: _WorkerHost | None = None

    def register(self, app: CompiledApp, app_ref: str | None = None) -> None:
        self.apps[app.name] = app
        if app_ref:
            APP_FILES[app.name] = app_ref

    def task_queue(self, app: CompiledApp) -> str:
        """Where the app's runs and steps go: a queue per version of its code (unless the settings
        name one: then versions are the deployer's to keep apart)."""
        return self.settings.task_queue or default_task_queue(app.name, code_version(app, APP_FILES.get(app.name)))

    def entity_queue(self, app: CompiledApp) -> str:
        """Where the app's entities keyed across runs live: the same queue for every version."""
        return entity_task_queue(self.settings.task_queue or default_task_queue(app.name))

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ConfigError("the temporal runtime is not open")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            self._client = await self._connect()
        except RuntimeError as exc:  # the SDK reports connection failures as RuntimeError
            raise BackendError(
                f"cannot reach Temporal at {self.settings.address} (namespace {self.settings.namespace!r}): {exc}. "
                "Start a local dev server with 'roost dev temporal', or set ROOST_TEMPORAL_ADDRESS") from exc
        _open.add(self)
        if self.settings.serve:
            await self.serve()

    async def _connect(self) -> Client:
        """A client of the server. A server that has just started listens a moment before its
        frontend is healthy; that answer is waited out (up to ``STARTING_WAIT`` seconds), any
        other failure is not."""
        deadline = time.monotonic() + STARTING_WAIT
        while True:
            try:
                return await Client.connect(self.settings.address, namespace=self.settings.namespace,
                                            runtime=_sdk_runtime())
            except RuntimeError as exc:
                if "not healthy yet" not in str(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def serve(self) -> None:
        """Start one worker per task queue of the registered apps (in a thread of their own: see
        _WorkerHost), and beside each an activity worker on a task queue of this process alone, for
        the steps whose function only this process holds (lambdas, closures)."""
        queues: dict[str, list[CompiledApp]] = {}
        for app in self.apps.values():
            queues.setdefault(self.task_queue(app), []).append(app)
        serving = {w.task_queue for w, _ in self._workers}
        for app in self.apps.values():
            entities = self.entity_queue(app)
            if entities not in serving:
                serving.add(entities)
                if self._host is None:
                    self._host = _WorkerHost()
                worker = Worker(self.client, task_queue=entities, workflows=[EntityWorkflow],
                                workflow_runner=UnsandboxedWorkflowRunner(), graceful_shutdown_timeout=timedelta(seconds=1),
                                workflow_failure_exception_types=[RoostError])
                self._workers.append((worker, self._host.start(worker)))
        for queue, apps in queues.items():
            for app in apps:
                APPS[(queue, app.name)] = app
            if queue in serving:
                continue
            worker = Worker(
                self.client, task_queue=queue, workflows=[RunWorkflow, EntityWorkflow], activities=[run_step],
                workflow_runner=UnsandboxedWorkflowRunner(), sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
                max_heartbeat_throttle_interval=timedelta(seconds=1), graceful_shutdown_timeout=timedelta(seconds=1),
                workflow_failure_exception_types=[RoostError],
            )
            own = PROCESS_QUEUES.setdefault(queue, f"{queue}@{PROCESS_ID}")
            # Started steps heartbeat, so only one never started can wait past PICKUP_TIMEOUT:
            # a high limit keeps a busy process's queue from looking like a dead one's.
            steps = Worker(self.client, task_queue=own, activities=[run_step], max_concurrent_activities=1000,
                           max_heartbeat_throttle_interval=timedelta(seconds=1),
                           graceful_shutdown_timeout=timedelta(seconds=1))
            if self._host is None:
                self._host = _WorkerHost()
            self._workers.append((worker, self._host.start(worker)))
            self._workers.append((steps, self._host.start(steps)))

    async def run_workers(self) -> None:
        """Serve until the workers stop (``close``), fail, or this is cancelled (what ``roost serve`` does)."""
        await self.serve()
        running = asyncio.gather(*(asyncio.wrap_future(run) for _, run in self._workers))
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop_workers())
            if running.done() and not running.cancelled():
                running.exception()  # retrieved: it is the cancellation that is reported
            raise

    async def close(self) -> None:
        await self._stop_workers()
        self._client = None
        _open.discard(self)

    async def _stop_workers(self) -> None:
        """Shut the workers down: activities in flight get ``graceful_shutdown_timeout``, then are
        cancelled. Past CLOSE_WAIT, they are left to their daemon thread (and to the exit hook)."""
        host, self._host = self._host, None
        self._workers.clear()
        if host is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(host.stop())), CLOSE_WAIT)
        except TimeoutError:
            _log.warning("the Temporal workers did not shut down within %.0f s; left to stop at exit", CLOSE_WAIT)

    # -- runs -------------------------------------------------------------------------------

    def _handle(self, run_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(run_id)

    async def submit(self, submission: Submission) -> bool:
        app, run_id = submission.app, submission.run_id
        self.register(app)
        if self.settings.serve and self._client is not None:
            await self.serve()
        body = {
            "run_id": run_id, "app": app.name, "fingerprint": app.fingerprint,
            "input": json.loads(submission.input_json), "input_hash": submission.input_hash,
            "created_at": time.time(), "max_activations": app.max_activations,
            "entries": [{"agent": agent, "payload": payload} for agent, payload in submission.entries],
            "entity_queue": self.entity_queue(app),
        }
        if self.history_limit is not None:
            body["history_limit"] = self.history_limit
        try:
            await self.client.start_workflow(
                run_workflow(app.name), body, id=run_id, task_queue=self.task_queue(app),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                task_timeout=WORKFLOW_TASK_TIMEOUT,
                memo={"roost_app": app.name, "roost_input_hash": submission.input_hash, "roost_created_at": body["created_at"],
                      "roost_fingerprint": app.fingerprint},
            )
            return True
        except WorkflowAlreadyStartedError:
            pass
        except RPCError as exc:
            raise BackendError(f"Temporal refused to start run {run_id!r}: {exc}") from exc
        desc = await self._handle(run_id).describe()
        memo = await desc.memo()
        if memo.get("roost_app") != app.name or memo.get("roost_input_hash") != submission.input_hash:
            raise RunConflictError(
                f"run id {run_id!r} is already used by a run of app {memo.get('roost_app', desc.workflow_type)!r} "
                "with a different input; a run id names one run: use a new id for new input", run_id=run_id)
        return False

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        try:
            outcome = await asyncio.wait_for(self._outcome(run_id), timeout)
        except TimeoutError:
            raise TimeoutError(f"run {run_id!r} did not finish within {timeout} s") from None
        return outcome

    async def _outcome(self, run_id: str) -> RunRecord:
        """Wait for the workflow to close; its result (or failure details) is the final record."""
        handle = self._handle(run_id)
        try:
            run = await handle.result()  # follows the run's continue-as-new chain
        except WorkflowFailureError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
                return _record(await self._rest(handle, cause.details[0]))
            raise BackendError(f"run {run_id!r} ended on Temporal without a roost record: {exc}: {cause}") from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise self._not_found(run_id) from None
            raise BackendError(f"talking to Temporal failed: {exc}") from exc
        return _record(await self._rest(handle, run))

    async def _rest(self, handle: Any, run: dict[str, Any]) -> dict[str, Any]:
        """The activations a large run's record did not carry, read page by page with the query."""
        if "packed" in run:
            run["activations"] = json.loads(zlib.decompress(base64.b64decode(run.pop("packed"))))
        total = int(run.get("total", len(run["activations"])))
        while len(run["activations"]) < total:
            page = await handle.query(RECORD_QUERY, {"offset": len(run["activations"]), "limit": 1000},
                                      result_type=dict, rpc_timeout=QUERY_TIMEOUT)
            if not page["activations"]:
                break
            run["activations"].update(page["activations"])
        return run

    async def _describe(self, run_id: str, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription:
        """The run workflow's description; an unknown run is ``RunNotFoundError``."""
        try:
            return await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise self._not_found(run_id) from None
            raise BackendError(f"talking to Temporal failed: {exc}") from exc

    async def get(self, run_id: str) -> RunRecord:
        handle = self._handle(run_id)
        desc = await self._describe(run_id, handle)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return await self._outcome(run_id)
        try:
            run = await self._rest(handle, await handle.query(RECORD_QUERY, result_type=dict, rpc_timeout=QUERY_TIMEOUT))
        except RPCError as exc:  # no worker answers: what Temporal itself knows
            _log.info("no worker answered the record query of run %r: %s", run_id, exc)
            memo = await desc.memo()
            return RunRecord(run_id=run_id, app=str(memo.get("roost_app", desc.workflow_type)), status="running",
                             runtime="temporal", created_at=float(memo.get("roost_created_at", 0.0)))
        return _record(run)

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        out: list[RunSummary] = []
        seen: set[str] = set()
        async for wf in self.client.list_workflows(limit=limit * 4):
            if not wf.workflow_type.startswith("roost.") or wf.workflow_type == "roost.entity" or wf.id in seen:
                continue
            if wf.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue  # an earlier part of a run that continued as new (its latest part is listed)
            seen.add(wf.id)
            memo = await wf.memo()
            status = wf.status.name.lower() if wf.status else "running"
            status = {"timed_out": "failed", "terminated": "failed", "canceled": "cancelled"}.get(status, status)
            status = str(memo.get("roost_status", status))  # a cancelled run's workflow completes
            out.append(RunSummary(
                wf.id, str(memo.get("roost_app", wf.workflow_type[6:])), status,
                float(memo.get("roost_created_at", wf.start_time.timestamp())),
                wf.close_time.timestamp() if wf.close_time else None, "temporal",
                str(memo.get("roost_fingerprint") or "")[:8] or None))
            if len(out) >= limit:
                break
        return out

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        return PruneReport(0, prune_note(self.settings.address, self.settings.namespace))  # the namespace's retention

    async def resolve(self, run_id: str, name: str, value: Any) -> None:
        handle = self._handle(run_id)
        try:
            await handle.execute_update(RESOLVE, {"name": name, "value": value},
                                        rpc_timeout=timedelta(seconds=self.resolve_wait))
        except WorkflowUpdateFailedError as exc:
            reason = str(exc.cause) if exc.cause else str(exc)
            if RESOLVE_REFUSED in reason:  # the SDK puts the exception's type before it
                raise PromiseError(f"run {run_id!r}: {reason.partition(RESOLVE_REFUSED)[2]}", run_id=run_id) from None
            if "resolved" in reason:
                raise PromiseError(f"{name!r} of run {run_id!r} is resolved already", run_id=run_id) from None
            raise PromiseError(f"run {run_id!r} is finished: nothing waits for {name!r}", run_id=run_id) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            # No worker answered: leave the value in the run's history; it applies once one runs.
            _log.info("no worker answered resolving %r of run %r; sent as a signal", name, run_id)
            await handle.signal(RESOLVE_SIGNAL, {"name": name, "value": value})
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                if await self._exists(run_id):
                    raise PromiseError(f"run {run_id!r} is finished: nothing waits for {name!r}", run_id=run_id) from None
                raise self._not_found(run_id) from None
            raise BackendError(f"talking to Temporal failed: {exc}") from exc

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Temporal's own cancellation of the run workflow: the workflow turns it into the run
        engine's CancelRequested (so Temporal's tools cancel a run the same way)."""
        handle = self._handle(run_id)
        desc = await self._describe(run_id, handle)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            status = (await self._outcome(run_id)).status
            if status == "cancelled":
                return
            raise CancelError(f"run {run_id!r} is {status}: there is nothing to cancel", run_id=run_id)
        try:
            await handle.cancel()
        except RPCError as exc:
            raise BackendError(f"Temporal refused to cancel run {run_id!r}: {exc}") from exc

    async def await_waiting(self, run_id: str) -> list[str] | None:
        """A blocking update on the run workflow: no polling (see RunHandle.approval)."""
        for _ in range(AWAIT_TRIES):
            try:
                names: list[str] = await self._handle(run_id).execute_update(AWAIT_WAITING, result_type=list)
            except (WorkflowUpdateFailedError, RPCError) as exc:
                if isinstance(exc, WorkflowUpdateFailedError) and isinstance(exc.cause, ApplicationError) and (
                        exc.cause.type == CONTINUED):
                    continue  # the run continued as new: ask the new run
                if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND and not await self._exists(run_id):
                    raise self._not_found(run_id) from None
                if await self._running(run_id):
                    await asyncio.sleep(0.05)  # it reached the run between its continue-as-new and the new run
                    continue
                return []  # the run finished (an update cannot reach a closed workflow)
            return names
        return None  # the caller falls back to reading the run's record

    def _not_found(self, run_id: str) -> RunNotFoundError:
        return RunNotFoundError(run_id, f"on Temporal at {self.settings.address} (namespace {self.settings.namespace!r})")

    async def _running(self, run_id: str) -> bool:
        try:
            desc = await self._handle(run_id).describe()
        except RPCError:
            return False
        return desc.status == WorkflowExecutionStatus.RUNNING

    async def _exists(self, run_id: str) -> bool:
        try:
            await self._handle(run_id).describe()
        except RPCError:
            return False
        return True

    async def resume(self, app: CompiledApp, run_id: str) -> None:
        # Temporal continues a run by itself as soon as a worker serves its task queue.
        self.register(app)
        if not await self._exists(run_id):
            raise self._not_found(run_id)


def _position(value: Any) -> int | str:
    text = str(value)
    return int(text) if text.isdigit() else text


def _record(run: dict[str, Any]) -> RunRecord:
    acts = [
        ActivationRecord(
            id=a["id"], agent=a["agent"], kind=a["kind"], status=a["status"], cause=a.get("cause"),
            started_at=a.get("started"), finished_at=a.get("finished"), attempts=a.get("attempts", 0),
            output=a.get("output"), error=a.get("error"),
            steps=[StepRecord(_position(s["position"]), s["kind"], s["name"], s["status"], s["attempts"],
                              s.get("started"), s.get("finished"), s.get("value")) for s in a.get("steps") or ()],
        )
        for a in sorted(run["activations"].values(), key=lambda a: a.get("seq", 0))
    ]
    acts += [ActivationRecord(id=m, agent=m.split(":", 1)[0], kind="?", status="pending")
             for m in run.get("expected", []) if m not in run["activations"]]
    status = run["status"]
    if status == "running" and run.get("waiting"):
        status = "waiting"
    return RunRecord(run_id=run["run_id"], app=run["app"], status=status, runtime="temporal", input=run.get("input"),
                     created_at=run["created_at"], finished_at=run.get("finished_at"), error=run.get("error"),
                     activations=acts, waiting_on=[w["name"] for w in run.get("waiting", [])])


# -- the SDK's threads: workers that outlive the caller's loop, and a clean exit ---------------------

CLOSE_WAIT = 10.0
"""Seconds ``close`` (and the exit hook) waits for the workers to shut down."""

PROCESS_ID = uuid.uuid4().hex[:16]
"""Names this process's own activity task queues (see ``PROCESS_QUEUES``)."""
_sdk: Runtime | None = None
_open: weakref.WeakSet[TemporalRuntime] = weakref.WeakSet()
_hosts: set[_WorkerHost] = set()


def _sdk_runtime() -> Runtime:
    """The SDK runtime of roost's clients and workers (the SDK's Rust core and its Tokio threads),
    made on first use and released at exit (:func:`_stop_workers_at_exit`, :func:`_release_sdk`)."""
    global _sdk
    if _sdk is None:
        _sdk = Runtime(telemetry=TelemetryConfig())
        # Run before concurrent.futures refuses new work at exit (registered before this): a
        # worker shutting down hands its workflow evictions to an executor.
        threading._register_atexit(_stop_workers_at_exit)  # type: ignore[attr-defined]
        atexit.register(_release_sdk)
    return _sdk


def _stop_workers_at_exit() -> None:
    """Shut down the workers of runtimes never closed (an App a script did not close)."""
    for runtime in list(_open):
        runtime._host = None
        runtime._workers.clear()
    for host in list(_hosts):
        host.join(CLOSE_WAIT)


def _release_sdk() -> None:
    """At exit, while the interpreter is whole, drop every reference roost holds to the SDK's
    core, which stops its Tokio threads.

    Left to interpreter finalization, a Tokio thread still finishing a call (completing or
    dropping its Python future) takes the GIL there; CPython ends such a thread in the middle of
    Rust code, and the process dies with "Fatal Python error: PyGILState_Release" or a segfault
    after the script's work is done (temporalio 1.35: one exit in 6 to 20, more under load). Freeing
    the core here waits for those threads with the GIL released (the SDK's own drop does that)."""
    global _sdk
    for runtime in list(_open):
        runtime._client = None
    _sdk = None
    gc.collect()  # the core goes with its last reference; some sit in cycles (tasks, tracebacks)


class _WorkerHost:
    """An event loop in a daemon thread, where a TemporalRuntime's workers run.

    Workers live as long as their runtime, not as long as the loop that opened it: when its main
    coroutine returns, ``asyncio.run`` cancels every task of its loop at once, and a worker
    cancelled that way (rather than shut down) can wait forever for its workflow cache to empty
    ("continually retrying eviction", temporalio 1.35): a script that never closed its App hung
    at exit. The client is shared: the SDK lets a connected client serve any loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._workers: list[Worker] = []
        self._stopped: concurrent.futures.Future[None] | None = None
        self._thread = threading.Thread(target=self._serve, name="roost-temporal-workers", daemon=True)
        _hosts.add(self)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()
            _hosts.discard(self)

    def start(self, worker: Worker) -> concurrent.futures.Future[None]:
        """Run ``worker`` here: the future ends when it does (with what stopped it)."""
        self._workers.append(worker)
        return asyncio.run_coroutine_threadsafe(worker.run(), self.loop)

    def stop(self) -> concurrent.futures.Future[None]:
        """Shut the workers down, then end the thread; done once they are down (idempotent)."""
        if self._stopped is None:
            workers, self._workers = self._workers, []

            async def shutdown() -> None:
                await asyncio.gather(*(worker.shutdown() for worker in workers), return_exceptions=True)

            self._stopped = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            self._stopped.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.loop.stop))
        return self._stopped

    def join(self, timeout: float) -> None:
        """``stop``, and wait up to ``timeout`` seconds for the thread to end."""
        with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            self.stop().result(timeout)
        self._thread.join(timeout)
