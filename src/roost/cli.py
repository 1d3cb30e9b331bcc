"""The ``roost`` command: run apps, list and show runs, resolve approvals, resume runs.

Every command reads the journal given by ``--journal`` (default ``$ROOST_JOURNAL`` or
``.roost/roost.db``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic_core
from rich.console import Console
from rich.json import JSON
from rich.text import Text

from . import __version__
from ._cli_view import CliError, ProgressView, run_detail, runs_table
from ._loader import load_app
from .app import App
from .errors import InputValidationError, RoostError, RunFailedError, RunNotFoundError
from .result import FINISHED, RunRecord, RunResult
from .runtime.local import DEFAULT_PATH, LocalRuntime
from .runtime.local._owner import is_alive

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


def _journal_hint(journal: Path) -> str | None:
    """The --journal another shell needs to reach this journal (None for the default one)."""
    return None if journal == DEFAULT_PATH else str(journal)


def _existing(journal: Path) -> Path:
    if not journal.exists():
        raise CliError(f"no journal at {journal}: no run has been recorded there (see --journal / $ROOST_JOURNAL)")
    return journal


def _interrupted(run_id: str, journal: Path) -> CliError:
    hint = f"roost runs resume {run_id}" + ("" if _journal_hint(journal) is None else f" --journal {journal}")
    return RunInterruptedError(f"interrupted; run {run_id} is kept in the journal: continue it with {hint}")


def _run_async(coro: Coroutine[Any, Any, T], run_id: str | None, journal: Path) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        if run_id is None:
            raise click.Abort() from None
        raise _interrupted(run_id, journal) from None


# -- following a run ------------------------------------------------------------------------------


async def _follow(app: App, run_id: str, console: Console, journal: Path,
                  drive: Callable[[], Awaitable[RunResult]]) -> RunRecord:
    """Run ``drive`` (which starts or resumes the run and waits for it) under the progress view."""
    view = ProgressView(console, run_id, app.compiled, journal_hint=_journal_hint(journal))
    app.listeners.append(view.on_event)
    follower: asyncio.Task[None] | None = None
    try:
        with view:
            runtime = await app.runtime(resume=False)  # this run only; other orphans stay put
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
@journal_option
def run(app_ref: str, input_: str, run_id: str | None, journal: Path) -> None:
    """Run the App built by FILE (its ATTR global, or its only App) on an input."""
    app = _prepare(app_ref, journal)
    raw = _read_input(input_)
    try:
        run_id = app.submission(raw, run_id).run_id  # validates before anything is journaled; new id if none
    except InputValidationError as exc:
        raise BadInputError(str(exc)) from None
    console = _stdout()

    async def drive() -> RunResult:
        handle = await app.start(raw, run_id)
        return await handle.result(raise_on_failure=False)

    record = _run_async(_follow(app, run_id, console, journal, drive), run_id, journal)
    _report(app, record, console)


@cli.group()
def runs() -> None:
    """List, show and resume runs in the journal."""


@runs.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@journal_option
def runs_list(limit: int, journal: Path) -> None:
    """The most recent runs."""
    console = _stdout()
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
@journal_option
def runs_show(run_id: str, as_json: bool, journal: Path) -> None:
    """A run's activations, their journal steps, what it waits on and its error."""
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
    _stdout().print(run_detail(record, orphaned=orphaned))


@runs.command("resume")
@click.argument("run_id")
@app_option
@journal_option
def runs_resume(run_id: str, app_ref: str | None, journal: Path) -> None:
    """Continue a run whose process died, with the App that started it."""
    _existing(journal)
    row = _run_async(_run_row(journal, run_id), None, journal)
    app = _app_for_run(run_id, row, app_ref)
    if app is None:
        raise CliError(f"run {run_id} has no recorded app file (it was built outside a file); pass --app FILE[:ATTR]")
    app.journal = journal
    console = _stdout()
    record = _run_async(_resume(app, run_id, console, journal), run_id, journal)
    _report(app, record, console)


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
@journal_option
def resolve(run_id: str, name: str, value: str, app_ref: str | None, journal: Path) -> None:
    """Answer an approval (VALUE true/false) or resolve a promise NAME of a run.

    VALUE is read as JSON when it parses (true, 3, {"a": 1}), else as a string. If the process that
    ran the run is gone, the run is resumed here to its end.
    """
    _existing(journal)
    parsed = _parse_value(value)

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
