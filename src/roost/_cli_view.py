"""Rich rendering for the ``roost`` command: the live progress view of a run, and run details."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import click
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from .result import FINISHED, ActivationRecord, RunRecord

if TYPE_CHECKING:
    from ._graph import CompiledApp
    from .runtime import DurableRuntime, RunSummary

class CliError(click.ClickException):
    """An error shown as one red line on stderr (no traceback)."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        console = Console(file=file, stderr=file is None, highlight=False)
        console.print(Text(f"error: {self.format_message()}", style="bold red"), soft_wrap=True)


STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "waiting": "bold yellow",
    "completed": "green",
    "rejected": "magenta",
    "absorbed": "dim",
    "failed": "bold red",
    "cancelled": "dim red",
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_time(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status.split(" ")[0], ""))


def compact_json(value: Any, limit: int | None = 80) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def resolve_hint(run_id: str, name: str, *, approval: bool, runtime: str | None = None) -> str:
    hint = f"roost resolve {shlex.quote(run_id)} {shlex.quote(name)} {'true|false' if approval else 'VALUE'}"
    return hint if runtime is None else f"{hint} --runtime {runtime}"


def is_approval(app: CompiledApp | None, agent: str, name: str) -> bool:
    """Whether promise ``name`` of ``agent`` is its approval (named after the agent) or a promise
    its orchestration code awaits."""
    spec = app.specs.get(agent) if app is not None else None
    if spec is None or not spec.approval:
        return False
    return name == agent or name.startswith((f"{agent}[", f"{agent}#"))


def _waiting_step(act: ActivationRecord) -> str | None:
    for step in act.steps:
        if step.kind == "promise" and step.status == "waiting":
            return step.name
    return None


def _promise_agent(record: RunRecord, name: str) -> str | None:
    """The agent an awaited promise belongs to when the record has no steps to say so (prod
    runtimes): an approval is named after its agent (``editor``, ``editor[key]``, ``editor#2``)."""
    base = name.split("[")[0].split("#")[0]
    return base if any(a.agent == base and a.status in ("pending", "running") for a in record.activations) else None


def waiting_names(record: RunRecord) -> dict[str, str | None]:
    """What the run waits on, each with its agent when known."""
    out: dict[str, str | None] = {}
    for act in record.activations:
        step = _waiting_step(act)
        if step is not None:
            out.setdefault(step, act.agent)
    for name in record.waiting_on:
        if name not in out:
            out[name] = _promise_agent(record, name)
    return out


def _stepless_waiting_agents(record: RunRecord) -> set[str]:
    """Agents waiting on a promise that no journal step shows (prod runtimes record no steps)."""
    from_steps = {name for name in (_waiting_step(a) for a in record.activations) if name is not None}
    return {agent for name in record.waiting_on if name not in from_steps
            and (agent := _promise_agent(record, name)) is not None}


@dataclass
class _Row:
    agent: str
    status: str = "pending"
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at
        if end is None:
            if self.status in ("running", "waiting"):
                end = time.time()
            else:
                return None
        return end - self.started_at


class ProgressView:
    """Follows one run: a live table (agent, status, duration, attempts) on a terminal, plain
    lines otherwise. Feed it runtime events with :meth:`on_event` (a listener) and records with
    :meth:`update`; :meth:`follow` polls the runtime for what events do not say (attempts, and
    what a resumed run waits on).

    ``polled``: the runtime sends no events (prod runtimes), so the polled records say it all:
    finished activations are printed from them, and what the run waits on comes from the record's
    ``waiting_on`` when it has no steps. ``runtime_hint`` goes into the ``roost resolve`` hints."""

    def __init__(self, console: Console, run_id: str, app: CompiledApp | None = None,
                 *, journal_hint: str | None = None, runtime_hint: str | None = None, polled: bool = False) -> None:
        self.console = console
        self.run_id = run_id
        self.app = app
        self.journal_hint = journal_hint
        self.runtime_hint = runtime_hint
        self.polled = polled
        self.rows: dict[str, _Row] = {}
        self.announced: set[str] = set()
        self.printed: set[str] = set()
        self.live = console.is_terminal
        self._live: Live | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ProgressView:
        if self.live:
            self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=8,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def finish(self, record: RunRecord) -> None:
        """Show the final state: the live table stays on screen; in plain mode print it once."""
        self.update(record)
        if self._live is not None:
            self._live.refresh()
        elif self.rows:
            self.console.print(self.render())

    # -- input --------------------------------------------------------------------------------

    def on_event(self, data: dict[str, Any]) -> None:
        if data.get("run_id") != self.run_id:
            return
        event, agent, detail = data.get("event"), str(data.get("agent")), data.get("detail")
        at = float(data.get("at") or time.time())
        if event == "started" and detail is not None:
            row = self.rows.setdefault(detail, _Row(agent))
            row.status, row.finished_at = "running", None
            row.started_at = row.started_at or at
            spec = self.app.specs.get(agent) if self.app is not None else None
            if spec is None or spec.kind == "single":  # a converge/gather input may only be absorbed
                self._line(Text.assemble(("started   ", "cyan"), agent))
        elif event == "finished" and detail is not None:
            status = str(data.get("status") or "completed")
            if status == "absorbed":
                self.rows.pop(detail, None)
                return
            row = self.rows.setdefault(detail, _Row(agent, started_at=at))
            row.status, row.finished_at = status, at
            error = data.get("error")
            if isinstance(error, dict):
                row.attempts = max(row.attempts, int(error.get("attempts") or 0))
            line = Text.assemble((f"{status:<10}", STATUS_STYLE.get(status, "")), agent, f"  {fmt_duration(row.duration)}")
            if isinstance(error, dict):
                line.append(f"  {error.get('error_type')}: {error.get('error_message')}", style="red")
            self._line(line)
        elif event == "waiting" and detail is not None:
            for row in self.rows.values():
                if row.agent == agent and row.status == "running":
                    row.status = "waiting"
            self.announce(agent, str(detail))

    def update(self, record: RunRecord) -> None:
        """Bring the rows up to date with the run's record (and in its order)."""
        rows: dict[str, _Row] = {}
        waits = waiting_names(record)
        waiting_agents = _stepless_waiting_agents(record)
        for act in record.activations:
            if act.status == "absorbed":
                continue
            row = rows[act.id] = self.rows.get(act.id) or _Row(act.agent)
            if act.status not in ("pending", "running"):
                row.status, row.started_at, row.finished_at = act.status, act.started_at, act.finished_at
                row.attempts = act.attempts
                if self.polled and act.status in ("completed", "rejected", "failed", "cancelled"):
                    self._finished_line(act.id, row, act.error)
                continue
            if act.status == "running":  # it began, no outcome yet: it may still wait on a promise
                row.started_at = row.started_at or act.started_at
                row.status = "running" if row.status == "pending" else row.status
            row.attempts = max([row.attempts, *(s.attempts for s in act.steps)])
            if _waiting_step(act) is not None or (not act.steps and act.agent in waiting_agents):
                row.status = "waiting"
            elif row.status == "waiting":
                row.status = "running"
        if record.status not in FINISHED:
            for name, agent in waits.items():
                self.announce(agent, name)
        absorbed = {a.id for a in record.activations if a.status == "absorbed"}
        rows.update((key, row) for key, row in self.rows.items() if key not in rows and key not in absorbed)
        self.rows = rows

    def _finished_line(self, key: str, row: _Row, error: dict[str, Any] | None) -> None:
        if key in self.printed:
            return
        self.printed.add(key)
        line = Text.assemble((f"{row.status:<10}", STATUS_STYLE.get(row.status, "")), row.agent,
                             f"  {fmt_duration(row.duration)}")
        if error:
            line.append(f"  {error.get('error_type')}: {error.get('error_message')}", style="red")
        self._line(line)

    async def follow(self, runtime: DurableRuntime, interval: float = 0.5) -> None:
        """Poll the run's record until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.update(await runtime.get(self.run_id))
            except Exception:  # a passing journal hiccup must not stop the run being shown
                continue

    def announce(self, agent: str | None, name: str) -> None:
        if name in self.announced:
            return
        self.announced.add(name)
        if agent is not None and is_approval(self.app, agent, name):
            what = f"waiting for approval of {name!r}"
            hint = resolve_hint(self.run_id, name, approval=True, runtime=self.runtime_hint)
        else:
            what = f"waiting for promise {name!r}" + ("" if agent is None else f" of agent {agent!r}")
            hint = resolve_hint(self.run_id, name, approval=False, runtime=self.runtime_hint)
        line = Text.assemble((what, "bold yellow"), ": ", (hint, "bold"))
        self.console.print(line, soft_wrap=True)
        if self.journal_hint:
            self.console.print(Text(f"  (add --journal {shlex.quote(self.journal_hint)})", style="dim"), soft_wrap=True)

    def _line(self, text: Text) -> None:
        if not self.live:
            self.console.print(text, soft_wrap=True)

    # -- output -------------------------------------------------------------------------------

    def render(self) -> Table:
        table = Table(title=f"run {self.run_id}", title_justify="left", expand=False)
        table.add_column("agent", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("duration", justify="right", no_wrap=True)
        table.add_column("attempts", justify="right", no_wrap=True)
        for row in self.rows.values():
            table.add_row(row.agent, status_text(row.status), fmt_duration(row.duration), str(row.attempts or "-"))
        return table


# -- run details ------------------------------------------------------------------------------


_NARROWEST = {"app": 8, "version": 7, "status": 10, "created": 10, "duration": 8}
"""How narrow the columns beside the run id may get (wrapped, or folded) before ``roost runs list``
grows wider than the terminal instead."""


def _shrunk(natural: dict[str, int], budget: int) -> dict[str, int]:
    """Widths for columns that want ``natural``, within ``budget`` if they can be: the widest
    gives up a character at a time, none below its ``_NARROWEST``."""
    widths = dict(natural)
    while sum(widths.values()) > budget:
        name = max((n for n in widths if widths[n] > min(_NARROWEST[n], natural[n])), key=widths.__getitem__,
                   default=None)
        if name is None:
            break
        widths[name] -= 1
    return widths


def runs_table(runs: list[RunSummary], orphaned: set[str], width: int | None = None) -> Table:
    """The runs, in a table that fits ``width`` columns by wrapping every column but the run id's:
    a run id is what users copy into other commands, so it is never cut (when even the narrowest
    columns beside it do not fit, the table is wider than ``width``: print it with
    :func:`print_uncut`)."""
    # The version column shows when the runs listed span several versions of an app (after a deploy).
    versions: dict[str, set[str]] = {}
    for r in runs:
        versions.setdefault(r.app, set()).add(r.version or "-")
    with_version = any(len(v) > 1 for v in versions.values())
    rows: list[tuple[str | Text, ...]] = []
    for r in runs:
        status = status_text(r.status)
        if r.run_id in orphaned:
            status.append(" (orphaned)", style="dim")
        end = r.finished_at if r.finished_at is not None else (time.time() if r.status not in FINISHED else None)
        rows.append((r.run_id, r.app, *((r.version or "-",) if with_version else ()), status, fmt_time(r.created_at),
                     fmt_duration(None if end is None else end - r.created_at)))
    id_width = max([len("run id"), *(cell_len(str(row[0])) for row in rows)])
    names = [n for n in _NARROWEST if with_version or n != "version"]
    natural = {name: max([len(name), *(cell_len(str(row[i + 1])) for row in rows)]) for i, name in enumerate(names)}
    natural["duration"] = max(natural["duration"], 8)
    # Each column has a space of padding either side and a border after it (one more at the left).
    widths = natural if width is None else _shrunk(natural, width - id_width - (3 * (len(natural) + 1) + 1))
    table = Table(title="runs", title_justify="left")
    table.add_column("run id", no_wrap=True, min_width=id_width)
    table.add_column("app", overflow="fold", max_width=widths["app"])
    if with_version:
        table.add_column("version", overflow="fold", max_width=widths["version"])
    table.add_column("status", max_width=widths["status"])
    table.add_column("created", max_width=widths["created"])
    table.add_column("duration", justify="right", min_width=min(8, widths["duration"]), max_width=widths["duration"])
    for row in rows:
        table.add_row(*row)
    return table


def print_uncut(console: Console, table: Table) -> None:
    """Print ``table`` at its own width when the console is narrower (the terminal wraps its
    lines) rather than let rich cut columns that must stay whole, such as run ids."""
    need = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if need <= console.width:
        console.print(table)
        return
    # console.print never renders wider than the console: render at the table's width, print as is.
    console.print(Segments(console.render(table, console.options.update_width(need))), crop=False)


def run_detail(record: RunRecord, app: CompiledApp | None = None, *, orphaned: bool = False,
               runtime_hint: str | None = None) -> RenderableType:
    parts: list[RenderableType] = []
    status = status_text(record.status)
    if orphaned:
        status.append(" (no live process runs it)", style="dim")
    end = record.finished_at if record.finished_at is not None else time.time()
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold", no_wrap=True)
    header.add_column()
    header.add_row("run", record.run_id)
    header.add_row("app", record.app)
    header.add_row("status", status)
    header.add_row("created", fmt_time(record.created_at))
    header.add_row("duration", fmt_duration(end - record.created_at))
    header.add_row("input", Text(compact_json(record.input, 200)))
    agents_of = waiting_names(record)
    stepless = _stepless_waiting_agents(record)
    if record.waiting_on:
        waits = Text()
        for i, name in enumerate(record.waiting_on):
            agent = agents_of.get(name) or name
            approval = is_approval(app, agent, name) if app is not None else name.split("[")[0].split("#")[0] == agent
            if i:
                waits.append("\n")
            waits.append(name, style="bold yellow")
            waits.append(f"  ({resolve_hint(record.run_id, name, approval=approval, runtime=runtime_hint)})",
                         style="dim")
        header.add_row("waiting on", waits)
    if record.error:
        err = record.error
        where = f"agent {err.get('agent')!r}" + (f", step {err['step']!r}" if err.get("step") else "")
        header.add_row("error", Text(
            f"{where} failed after {err.get('attempts')} attempt(s): {err.get('error_type')}: {err.get('error_message')}",
            style="red",
        ))
    parts.append(header)
    if record.error and record.error.get("traceback"):
        parts.append(Text("\nwhere it was raised (roost's frames left out):", style="bold"))
        parts.append(Text(str(record.error["traceback"]), style="red"))

    acts = Table(title="activations", title_justify="left")
    for name in ("agent", "kind", "status", "cause", "attempts", "duration", "output"):
        acts.add_column(name, no_wrap=name not in ("cause", "output"),
                        justify="right" if name in ("attempts", "duration") else "left")
    for a in record.activations:
        output: Text | str = "-"
        if a.error:
            output = Text(f"{a.error.get('error_type')}: {a.error.get('error_message')}", style="red")
        elif a.output is not None:
            output = compact_json(a.output)
        waits_here = _waiting_step(a) is not None or (not a.steps and a.agent in stepless)
        act_status = "waiting" if a.status in ("pending", "running") and waits_here else a.status
        acts.add_row(a.agent, a.kind, status_text(act_status), a.cause or "-", str(a.attempts),
                     fmt_duration(a.duration), output)
    parts.append(acts)

    for a in record.activations:
        if not a.steps:
            continue
        steps = Table(title=f"steps of {a.agent} ({a.id})", title_justify="left")
        for name in ("position", "kind", "name", "status", "attempts"):
            steps.add_column(name, no_wrap=True, justify="right" if name in ("position", "attempts") else "left")
        for s in a.steps:
            steps.add_row(str(s.position), s.kind, s.name, status_text(s.status), str(s.attempts))
        parts.append(steps)
    return Group(*parts)
