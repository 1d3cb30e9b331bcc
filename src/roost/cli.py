"""The ``roost`` command: run apps, list and show runs, resolve approvals, resume runs, serve apps.

By default every command works on the local runtime's journal given by ``--journal`` (default
``$ROOST_JOURNAL`` or ``.roost/roost.db``). ``roost run --prod`` runs on the configured prod runtime
(``load_settings().runtime``); ``roost runs ...`` and ``roost resolve`` take ``--runtime local|restate``
(default ``local``, or the configured runtime when ``ROOST_MODE=prod``); ``roost serve`` serves an
app's Restate endpoint until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
from ._cli_view import CliError, ProgressView, run_detail, runs_table
from ._config import Settings, load_settings
from ._loader import load_app, split_ref
from .app import App
from .errors import InputValidationError, RoostError, RunFailedError, RunNotFoundError
from .result import FINISHED, RunRecord, RunResult
from .runtime import DurableRuntime
from .runtime.local import DEFAULT_PATH, LocalRuntime
from .runtime.local._owner import is_alive

if TYPE_CHECKING:
    from .runtime.restate import RestateRuntime

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


class BadInputError(CliError):
    exit_code = EXIT_BAD_INPUT


class RunInterruptedError(CliError):
    exit_code = EXIT_INTERRUPTED


class _Group(click.Group):
    """Turns a RoostError raised by any command into a message and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputValidationError as exc:
            raise BadInputError(str(exc)) from None
        except RoostError as exc:
            raise CliError(str(exc)) from None


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
    "Where the runs are: 'local' (the SQLite journal, see --journal) or 'restate' (the Restate server of the "
    "settings: ROOST_RESTATE_INGRESS/ROOST_RESTATE_ADMIN or [tool.roost.restate]). "
    "Default: local, or the configured prod runtime (ROOST_RUNTIME / [tool.roost] runtime) when ROOST_MODE=prod."
)


def runtime_option(fn: F) -> F:
    return click.option("--runtime", "runtime_name", type=click.Choice(["local", "restate"]), default=None,
                        help=RUNTIME_HELP)(fn)


RESTATE_TIMEOUT = 15.0
"""Seconds a ``--runtime restate`` command waits for Restate to answer about a run."""


def _runtime_source() -> str:
    """Where the configured runtime comes from, for messages."""
    if os.environ.get("ROOST_RUNTIME"):
        return "ROOST_RUNTIME"
    source = load_settings().source
    return "the default" if source == "defaults" else f"the runtime setting of {source}"


def _check_available(runtime: str) -> None:
    if runtime == "temporal":
        raise BadInputError(f"the temporal runtime is not available yet in this version of roost (set by "
                            f"{_runtime_source()}): use restate or local")


def _runtime_name(given: str | None) -> str:
    """The runtime a ``runs``/``resolve`` command reads: ``--runtime``, else the configured prod
    runtime when ``ROOST_MODE=prod``, else local."""
    if given is not None:
        return given
    if (os.environ.get("ROOST_MODE") or "").lower() != "prod":
        return "local"
    name = load_settings().runtime
    _check_available(name)
    return name


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
        raise CliError(f"no journal at {journal}: no run has been recorded there (see --journal / $ROOST_JOURNAL)")
    return journal


def _interrupted(run_id: str, journal: Path, runtime: str = "local") -> CliError:
    if runtime == "restate":
        return RunInterruptedError(
            f"interrupted; run {run_id} stays on Restate and goes on wherever the app is served "
            f"('roost serve FILE'): follow it with roost runs show {run_id} --runtime restate")
    hint = f"roost runs resume {run_id}" + ("" if _journal_hint(journal) is None else f" --journal {journal}")
    return RunInterruptedError(f"interrupted; run {run_id} is kept in the journal: continue it with {hint}")


def _run_async(coro: Coroutine[Any, Any, T], run_id: str | None, journal: Path, runtime: str = "local") -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        if run_id is None:
            raise click.Abort() from None
        raise _interrupted(run_id, journal, runtime) from None


# -- the restate runtime as a client ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _restate_client() -> AsyncIterator[RestateRuntime]:
    """A RestateRuntime that only talks to the server of the settings (it serves nothing)."""
    from .runtime.restate import RestateRuntime

    rt = RestateRuntime(serve=False)
    await rt.open()
    try:
        yield rt
    finally:
        await rt.close()


async def _answer(rt: RestateRuntime, awaitable: Awaitable[T], what: str) -> T:
    """``awaitable``, or a clear error when Restate does not answer in time: roost's services (the
    run ledger) run in the process that serves the app, so without one a request just waits."""
    try:
        return await asyncio.wait_for(awaitable, RESTATE_TIMEOUT)
    except TimeoutError:
        raise CliError(
            f"Restate (ingress {rt.settings.ingress}) did not answer {what} within {RESTATE_TIMEOUT:.0f} s: "
            "runs are read and resolved by roost's services, which run where the app is served, and none "
            "seems to serve them: start one with 'roost serve FILE' (the request stays queued at Restate "
            "and is carried out once one does)") from None


def _endpoint_uri(endpoint: str, version: str) -> str:
    url = urlsplit(endpoint)
    return f"http://{url.hostname or '127.0.0.1'}:{url.port or 9080}/v/{version}"


async def _served_at(app: App, settings: Settings) -> str | None:
    """The URI where this version of the app is already served at the configured endpoint (by
    ``roost serve``), or None."""
    import httpx

    from .runtime.restate._endpoint import code_version

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
            follower = asyncio.create_task(view.follow(runtime))
            try:
                await drive()
            except RunFailedError:
                pass  # shown from the record below
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            record = await runtime.get(run_id)
            view.finish(record)
        return record
    finally:
        app.listeners.remove(view.on_event)
        await app.aclose()


async def _open_runtime(app: App, mode: str, runtime_name: str) -> DurableRuntime:
    """The app's runtime in ``mode``, opened. For restate, this process serves the app itself (when
    the settings say serve) unless ``roost serve`` already serves this version at the endpoint."""
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
            f"cannot serve the app at {settings.restate.endpoint}: {exc.strerror or exc}. If 'roost serve' serves "
            "another version of it there, restart it with this code, or set ROOST_RESTATE_SERVE=false so that "
            "this process only starts the run") from None


def _report(app: App, record: RunRecord, console: Console) -> None:
    """Print the outputs and the run id; exit 1 if the run failed."""
    result = RunResult(record, app.compiled)
    if record.status == "failed":
        error = result.error
        _stderr().print(Text(str(error) if error else f"run {record.run_id} failed", style="bold red"), soft_wrap=True)
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


async def _run_row(journal: Path, run_id: str) -> dict[str, Any]:
    async with (rt := LocalRuntime(journal, resume=False)):
        row = rt.journal.run_row(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        return dict(row)


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
@click.option("--run-id", help="Id of the run (default: a new one). An existing id attaches to that run.")
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
    """
    mode = _run_mode(mode, prod)
    runtime_name = "local"
    if mode == "prod":
        runtime_name = load_settings().runtime
        _check_available(runtime_name)
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
    """List, show and resume runs (in the local journal, or on Restate with --runtime restate)."""


@runs.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@runtime_option
@journal_option
def runs_list(limit: int, runtime_name: str | None, journal: Path) -> None:
    """The most recent runs."""
    console = _stdout()
    if _runtime_name(runtime_name) == "restate":

        async def restate_listing() -> tuple[list[Any], str]:
            async with _restate_client() as rt:
                return await _answer(rt, rt.list_runs(limit), "about its runs"), rt.settings.admin

        found, admin = _run_async(restate_listing(), None, journal)
        if not found:
            console.print(f"no runs on Restate (admin {admin})", soft_wrap=True)
            return
        console.print(runs_table(found, set()))
        return
    if not journal.exists():
        console.print(f"no runs: there is no journal at {journal} yet", soft_wrap=True)
        return

    async def listing() -> tuple[list[Any], set[str]]:
        async with (rt := LocalRuntime(journal, resume=False)):
            found = await rt.list_runs(limit)
            orphaned = set()
            for r in found:
                row = rt.journal.run_row(r.run_id)
                if r.status not in FINISHED and row is not None and not is_alive(row["owner"]):
                    orphaned.add(r.run_id)
            return found, orphaned

    found, orphaned = _run_async(listing(), None, journal)
    if not found:
        console.print(f"no runs in {journal}", soft_wrap=True)
        return
    console.print(runs_table(found, orphaned))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@runtime_option
@journal_option
def runs_show(run_id: str, as_json: bool, runtime_name: str | None, journal: Path) -> None:
    """A run's activations, their journal steps (local runtime), what it waits on and its error."""
    runtime = _runtime_name(runtime_name)
    if runtime == "restate":

        async def fetch_restate() -> tuple[RunRecord, bool]:
            async with _restate_client() as rt:
                return await _answer(rt, rt.get(run_id), f"about run {run_id!r}"), False

        record, orphaned = _run_async(fetch_restate(), None, journal)
    else:
        _existing(journal)

        async def fetch() -> tuple[RunRecord, bool]:
            async with (rt := LocalRuntime(journal, resume=False)):
                record = await rt.get(run_id)
                row = rt.journal.run_row(run_id)
                return record, record.status not in FINISHED and row is not None and not is_alive(row["owner"])

        record, orphaned = _run_async(fetch(), None, journal)
    if as_json:
        click.echo(json.dumps(asdict(record), indent=2, default=str))
        return
    _stdout().print(run_detail(record, orphaned=orphaned, runtime_hint=None if runtime == "local" else runtime))


@runs.command("resume")
@click.argument("run_id")
@app_option
@runtime_option
@journal_option
def runs_resume(run_id: str, app_ref: str | None, runtime_name: str | None, journal: Path) -> None:
    """Continue a run whose process died, with the App that started it.

    On Restate there is nothing to do by hand: Restate resumes a run by itself once an endpoint
    serves its app ('roost serve FILE'); this checks that the run exists and says so.
    """
    if _runtime_name(runtime_name) == "restate":
        _restate_resume(run_id, app_ref, journal)
        return
    _existing(journal)
    row = _run_async(_run_row(journal, run_id), None, journal)
    app = _app_for_run(run_id, row, app_ref)
    if app is None:
        raise CliError(f"run {run_id} has no recorded app file (it was built outside a file); pass --app FILE[:ATTR]")
    app.journal = journal
    console = _stdout()
    record = _run_async(_resume(app, run_id, console, journal), run_id, journal)
    _report(app, record, console)


async def _restate_run_status(run_id: str) -> tuple[str, str]:
    """The run's status on Restate and the admin URL. Run records are read through the admin API,
    so this answers even when no endpoint serves the app (RunNotFoundError if no such run)."""
    async with _restate_client() as rt:
        record = await _answer(rt, rt.get(run_id), f"about run {run_id!r}")
        return record.status, rt.settings.admin


def _restate_resume(run_id: str, app_ref: str | None, journal: Path) -> None:
    status, admin = _run_async(_restate_run_status(run_id), None, journal)
    console = _stdout()
    if status == "completed":
        console.print(Text.assemble("run ", (run_id, "bold"), " is finished on Restate: nothing to resume; see ",
                                    (f"roost runs show {run_id} --runtime restate", "bold")), soft_wrap=True)
        return
    serve_hint = f"roost serve {app_ref or 'FILE'}"
    console.print(Text.assemble("run ", (run_id, "bold"), f" is on Restate ({admin}; its invocation is {status}). "
                                "Restate resumes runs by itself once an endpoint serves their app: if none does, "
                                "start one with ", (serve_hint, "bold")), soft_wrap=True)


def _parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@cli.command()
@click.argument("run_id")
@click.argument("name")
@click.argument("value")
@app_option
@runtime_option
@journal_option
def resolve(run_id: str, name: str, value: str, app_ref: str | None, runtime_name: str | None,
            journal: Path) -> None:
    """Answer an approval (VALUE true/false) or resolve a promise NAME of a run.

    VALUE is read as JSON when it parses (true, 3, {"a": 1}), else as a string. Local runtime: if
    the process that ran the run is gone, the run is resumed here to its end. Restate: the run goes
    on wherever its app is served ('roost serve FILE').
    """
    parsed = _parse_value(value)
    if _runtime_name(runtime_name) == "restate":
        _restate_resolve(run_id, name, parsed, journal)
        return
    _existing(journal)

    async def answer() -> dict[str, Any]:
        async with (rt := LocalRuntime(journal, resume=False)):
            await rt.resolve(run_id, name, parsed)
            row = rt.journal.run_row(run_id)
            assert row is not None
            return dict(row)

    row = _run_async(answer(), None, journal)
    console = _stdout()
    console.print(Text.assemble("resolved ", (name, "bold"), f" = {json.dumps(parsed)} for run ", (run_id, "bold")),
                  soft_wrap=True)
    if row["status"] in FINISHED:
        return
    if is_alive(row["owner"]):
        pid = str(row["owner"]).split(":")[0]
        console.print(f"the process running it (pid {pid}) will continue the run", soft_wrap=True)
        return
    hint = f"roost runs resume {run_id} --app FILE[:ATTR]" + ("" if _journal_hint(journal) is None else f" --journal {journal}")
    try:
        app = _app_for_run(run_id, row, app_ref)
    except CliError as exc:
        raise CliError(f"no process runs it, and it cannot be resumed here: {exc.message}; continue it with {hint}") from None
    if app is None:
        console.print(f"no process runs it and its app file is unknown: continue it with {hint}", soft_wrap=True)
        return
    app.journal = journal
    console.print("no process runs it any more: resuming it here", soft_wrap=True)
    record = _run_async(_resume(app, run_id, console, journal), run_id, journal)
    _report(app, record, console)


def _restate_resolve(run_id: str, name: str, parsed: Any, journal: Path) -> None:
    async def answer() -> RunRecord:
        async with _restate_client() as rt:
            await _answer(rt, rt.resolve(run_id, name, parsed), f"to resolving {name!r} of run {run_id!r}")
            return await _answer(rt, rt.get(run_id), f"about run {run_id!r}")

    record = _run_async(answer(), None, journal)
    console = _stdout()
    console.print(Text.assemble("resolved ", (name, "bold"), f" = {json.dumps(parsed)} for run ", (run_id, "bold")),
                  soft_wrap=True)
    if record.status not in FINISHED:
        console.print(f"the run continues on Restate wherever its app is served; follow it with "
                      f"roost runs show {run_id} --runtime restate", soft_wrap=True)


# -- serving an app to a production runtime -----------------------------------------------------------


@cli.command()
@click.argument("app_ref", metavar="FILE[:ATTR]")
@click.option("--endpoint", metavar="URL",
              help="Where to serve the app's Restate endpoint. Default: ROOST_RESTATE_ENDPOINT or "
                   "[tool.roost.restate] endpoint (http://127.0.0.1:9080).")
@click.option("--admin", metavar="URL",
              help="Restate's admin API, where the endpoint is registered. Default: ROOST_RESTATE_ADMIN or "
                   "[tool.roost.restate] admin (http://127.0.0.1:9070).")
def serve(app_ref: str, endpoint: str | None, admin: str | None) -> None:
    """Serve the App built by FILE to Restate until Ctrl-C or SIGTERM.

    Serves the app's Restate endpoint from this process, registers it with the server (its URI
    names the code version: the app's wiring, roost's version and FILE's content, or
    $ROOST_CODE_VERSION) and runs the app's agents for every run Restate sends it, including runs
    started elsewhere ('roost run FILE --prod') and runs that were interrupted.
    """
    settings = load_settings()
    if settings.runtime == "temporal":
        raise BadInputError(
            f"the temporal worker is not available yet in this version of roost (the runtime is temporal, set by "
            f"{_runtime_source()}): 'roost serve' serves apps to Restate; set ROOST_RUNTIME=restate")
    if settings.runtime == "local":
        raise BadInputError(
            f"the configured runtime is 'local' (set by {_runtime_source()}): there is nothing to serve, local runs "
            "are carried out by the process that runs them; set ROOST_RUNTIME=restate to serve apps to Restate")
    from .runtime import restate as _backend  # noqa: F401  # MissingExtraError (the pip command) if not installed

    app = load_app(app_ref)
    app_file = str(Path(split_ref(app_ref)[0]).expanduser().resolve())
    endpoint = endpoint or settings.restate.endpoint
    admin = (admin or settings.restate.admin).rstrip("/")
    console = _stdout()
    hint = f"start runs from another shell with: roost run {app_ref} --prod --input JSON"
    if _endpoint_uri(endpoint, "") != _endpoint_uri(settings.restate.endpoint, ""):
        hint += f" (with ROOST_RESTATE_ENDPOINT={endpoint}, so that it finds this endpoint instead of serving the app)"
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
            raise CliError(f"cannot serve at {endpoint}: {exc.strerror or exc}; choose another --endpoint") from None
        try:
            await aregister_deployment(admin, uri)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach Restate's admin API at {admin} ({type(exc).__name__}: {exc}): is restate-server "
                "running? Start a local one with 'roost dev restate', or point --admin / ROOST_RESTATE_ADMIN at "
                "yours") from None
        console.print(Text.assemble("registered ", (uri, "bold"), f" with Restate (admin {admin})"), soft_wrap=True)
        console.print(Text.assemble("serving app ", (app.name, "bold"), f" ({', '.join(app.agents)}) at {uri}; "
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
            raise CliError(f"the endpoint server at {endpoint} stopped: {error or 'no reason given'}")
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
    import restate.server

    install = getattr(restate.server, "install_shutdown_hook", None)
    if install is not None:
        install(loop, callback, sig)
    else:
        loop.add_signal_handler(sig, callback)


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
        console.print(Text.assemble(("restate-server ", "bold"), binary_version(binary), f" running (pid {server.pid})",
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``roost`` console script."""
    cli.main(args=argv, prog_name="roost")


if __name__ == "__main__":
    main()
