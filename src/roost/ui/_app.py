"""The Starlette app of ``roost ui``: two pages and a JSON API, over one DurableRuntime.

The pages are static HTML; ``static/roost-ui.js`` fills them from the API and polls it every
second while a run goes on. Everything goes through the DurableRuntime interface (``list_runs``,
``get``, ``resolve``), so the UI works the same on the embedded journal, Restate and Temporal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._graph import CompiledApp
from .._ids import checked_run_id
from .._loader import load_app
from ..errors import PromiseError, RoostError, RunNotFoundError, UsageError
from ..result import FINISHED
from ..runtime import DurableRuntime, RunSummary, get_runtime
from ..runtime.local import LocalRuntime
from ._data import record_json, summary_json

T = TypeVar("T")

HOST = "127.0.0.1"
"""The UI resolves approvals for whoever can reach it, so it listens on this machine only."""
ANSWER_TIMEOUT = 15.0
"""Seconds a request waits for the runtime (a Restate or Temporal server) before answering 504."""
LIST_LIMIT = 200
"""Runs listed (the most recent; a status filter applies to these)."""
_WAITING_CHECKS = 20
"""At most this many 'running' runs of a prod listing are asked whether they wait on an approval."""
STATUSES = ("running", "waiting", *FINISHED)
"""What the runs list filters on (a run's status as ``list_runs`` and ``get`` say it)."""


class RunSource:
    """The runtime the UI reads: the local journal (``runtime="local"``, ``journal``) or a prod
    runtime opened as a client (``serve=False``), as ``roost runs --runtime`` does."""

    def __init__(self, runtime: str = "local", journal: Path | None = None) -> None:
        self.runtime_name = runtime
        self.journal = journal
        self.rt: DurableRuntime | None = None
        self._apps: dict[tuple[str, str], CompiledApp | None] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.runtime_name == "local":
            self.rt = LocalRuntime(self.journal, resume=False, auto_prune=False)
        else:
            self.rt = get_runtime(self.runtime_name, serve=False)
        await self._answer(self.rt.open())

    async def close(self) -> None:
        if self.rt is not None:
            await self.rt.close()
            self.rt = None

    @property
    def runtime(self) -> DurableRuntime:
        assert self.rt is not None, "RunSource used before open()"
        return self.rt

    async def _answer(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, ANSWER_TIMEOUT)

    # -- reading ------------------------------------------------------------------------------

    async def runs(self, status: str | None) -> list[RunSummary]:
        found = await self._answer(self.runtime.list_runs(LIST_LIMIT))
        if self.runtime_name != "local":  # a prod listing may say 'running' for a run waiting on an approval
            running = [r for r in found if r.status == "running"][:_WAITING_CHECKS]
            records = await asyncio.gather(*(asyncio.wait_for(self.runtime.get(r.run_id), 3.0) for r in running),
                                           return_exceptions=True)
            for summary, record in zip(running, records, strict=True):
                if not isinstance(record, BaseException) and record.status not in FINISHED:
                    summary.status = record.status
        return [r for r in found if status is None or r.status == status]

    async def run(self, run_id: str) -> dict[str, Any]:
        record = await self._answer(self.runtime.get(run_id))
        app, note = self.app_of(run_id, record.app)
        return record_json(record, app, note)

    def _row(self, run_id: str) -> dict[str, Any] | None:
        if not isinstance(self.rt, LocalRuntime):
            return None
        row = self.rt.journal.run_row(run_id)
        return dict(row) if row is not None else None

    def app_of(self, run_id: str, app_name: str) -> tuple[CompiledApp | None, str | None]:
        """The run's app, loaded from the file its journal recorded (embedded runtime; cached),
        and a note when there is none: then the graph shows only what the run's activations show."""
        row = self._row(run_id)
        ref = row.get("app_ref") if row is not None else None
        if not ref:
            return None, "the app's code is not known here: the graph shows the agents that ran"
        key = (str(ref), app_name)
        if key not in self._apps:
            try:
                app = load_app(str(ref), prefer_name=app_name)
                self._apps[key] = app.compiled if app.name == app_name else None
            except Exception:  # noqa: BLE001 - the user's file may have moved or fail to import: no graph from it
                self._apps[key] = None
        compiled = self._apps[key]
        if compiled is None:
            return None, f"the app file {ref} does not load here: the graph shows the agents that ran"
        return compiled, None

    # -- resolving ----------------------------------------------------------------------------

    async def resolve(self, run_id: str, name: str, value: Any) -> dict[str, Any]:
        """Resolve ``name`` of the run. Embedded runtime: if no live process runs the run, this
        one resumes it to its end (as ``roost resolve`` does), with the app its journal recorded."""
        rt = self.runtime
        if not isinstance(rt, LocalRuntime):
            await self._answer(rt.resolve(run_id, name, value))
            return await self.run(run_id)
        async with self._lock:  # one resolution at a time: the resume decision reads the journal
            row = self._row(run_id)
            if row is None:
                raise RunNotFoundError(run_id)
            app, _ = self.app_of(run_id, row["app"])
            if app is not None and app.fingerprint == row["fingerprint"]:
                rt.register(app, row.get("app_ref"))
            else:
                app = None
            await rt.resolve(run_id, name, value)
            row = self._row(run_id)
            assert row is not None
            if app is not None and row["status"] not in FINISHED and not rt.owned_elsewhere(row["owner"]):
                await rt.resume(app, run_id)  # runs on in this process, in the background
        return await self.run(run_id)


# -- HTTP ---------------------------------------------------------------------------------------


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str).encode("utf-8")


def _error(status: int, message: str) -> Response:
    return _JSON({"error": message}, status_code=status)


def _page(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _run_id(request: Request) -> str:
    return checked_run_id(str(request.path_params["run_id"]), what="the run id")


async def _guarded(coro: Awaitable[Response]) -> Response:
    """The response, or the error as JSON: 404 unknown run, 409 a refused resolution, 400 other
    roost errors, 504 when the runtime's server does not answer in time."""
    try:
        return await coro
    except RunNotFoundError as exc:
        return _error(404, f"no run with id {exc.run_id!r}")
    except (PromiseError, UsageError) as exc:
        return _error(409 if isinstance(exc, PromiseError) else 400, str(exc))
    except RoostError as exc:
        return _error(400, str(exc))
    except TimeoutError:
        return _error(504, f"the runtime did not answer within {ANSWER_TIMEOUT:g} s")


def create_app(source: RunSource) -> Starlette:
    """The ASGI app; its lifespan opens and closes ``source``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await source.open()
        try:
            yield
        finally:
            await source.close()

    async def runs_page(request: Request) -> Response:
        return HTMLResponse(_page("runs.html"))

    async def run_page(request: Request) -> Response:
        # The page fills itself from the API (and says what is wrong); its status says it too.
        try:
            await source.run(_run_id(request))
        except RunNotFoundError:
            return HTMLResponse(_page("run.html"), status_code=404)
        except UsageError:
            return HTMLResponse(_page("run.html"), status_code=400)
        except (RoostError, TimeoutError):  # the runtime's server fails or is slow now: the page retries
            pass
        return HTMLResponse(_page("run.html"))

    async def api_runs(request: Request) -> Response:
        async def answer() -> Response:
            status = request.query_params.get("status") or None
            if status is not None and status not in STATUSES:
                return _error(400, f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
            now = time.time()
            return _JSON({"runtime": source.runtime_name,
                          "runs": [summary_json(r, now) for r in await source.runs(status)]})
        return await _guarded(answer())

    async def api_run(request: Request) -> Response:
        async def answer() -> Response:
            return _JSON(await source.run(_run_id(request)))
        return await _guarded(answer())

    async def api_resolve(request: Request) -> Response:
        async def answer() -> Response:
            run_id = _run_id(request)
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                # a plain form post from another site cannot send this type without a preflight
                return _error(415, "send the resolution as application/json")
            try:
                body = json.loads(await request.body())
            except ValueError:
                return _error(400, "the body is not JSON")
            if not isinstance(body, dict) or not isinstance(body.get("name"), str) or "value" not in body:
                return _error(400, 'send {"name": NAME, "value": VALUE}')
            return _JSON(await source.resolve(run_id, body["name"], body["value"]))
        return await _guarded(answer())

    static = resources.files(__package__).joinpath("static")
    return Starlette(
        routes=[
            Route("/", runs_page),
            # ':path': a run id may hold a '/' (sent as %2F)
            Route("/runs/{run_id:path}", run_page),
            Route("/api/runs", api_runs),
            Route("/api/runs/{run_id:path}/resolve", api_resolve, methods=["POST"]),
            Route("/api/runs/{run_id:path}", api_run),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"])],  # no DNS rebinding
        lifespan=lifespan,
    )


async def serve(source: RunSource, port: int, shutdown: asyncio.Event | None = None) -> None:
    """Serve the UI on 127.0.0.1:``port`` until ``shutdown`` is set (default: SIGINT or SIGTERM)."""
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.errorlog = None  # errors reach the caller; hypercorn's own log would print tracebacks twice
    if shutdown is None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
    await hypercorn_serve(create_app(source), config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
