"""The ``roost`` command line: run, runs list/show/resume, resolve, and app loading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost import App
from roost._cli_view import CliError
from roost._loader import import_file, load_app, load_apps, split_ref
from roost.runtime.local import LocalRuntime
from tests.apps import PIPELINE
from tests.cli_support import OWLS, invoke, outputs_of, spawn, stop, wait_for, write_app

FAILING = '''
from pydantic import BaseModel
from roost import App, TerminalError, agent


class N(BaseModel):
    n: int


def ok(x: N) -> N:
    return N(n=x.n + 1)


def boom(x: N) -> N:
    raise TerminalError(f"boom at {x.n}")


first = agent("first").contracts(input=N, output=N).engine(ok)
second = agent("second").contracts(input=N, output=N).engine(boom).reacts_to(first)
app = App([first, second], name="failing")
'''


def show_json(run_id: str, journal: Path) -> dict[str, object]:
    res = invoke("runs", "show", run_id, "--json", "--journal", journal)
    assert res.exit_code == 0, res.output
    parsed: dict[str, object] = json.loads(res.stdout)
    return parsed


# -- roost run ----------------------------------------------------------------------------------


def test_run_completes_and_prints_outputs(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path), tmp_path / "j.db"
    res = invoke("run", app_file, "--input", '{"title": "owls"}', "--run-id", "r-1", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert outputs_of(res.stdout) == OWLS
    assert "run id: r-1" in res.stdout
    # not a terminal: plain progress lines, then the final table
    assert "started   writer" in res.stdout and "completed publisher" in res.stdout
    assert journal.exists()


def test_run_uses_roost_journal_env_and_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "env" / "roost.db"
    monkeypatch.setenv("ROOST_JOURNAL", str(journal))
    res = invoke("run", f"{write_app(tmp_path)}:pipeline", "-i", '{"title": "x"}', "--run-id", "r-env")
    assert res.exit_code == 0, res.output
    assert journal.exists()
    assert show_json("r-env", journal)["status"] == "completed"


def test_run_bad_input_exits_2_and_names_the_field(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    res = invoke("run", write_app(tmp_path), "--input", '{"name": "owls"}', "--journal", journal)
    assert res.exit_code == 2
    assert "title" in res.stderr and "Field required" in res.stderr
    assert "Traceback" not in res.output

    res = invoke("run", write_app(tmp_path), "--input", "{not json", "--journal", journal)
    assert res.exit_code == 2
    assert "not valid JSON" in res.stderr
    assert not journal.exists()  # nothing was started


def test_run_failure_exits_1_with_the_error(tmp_path: Path) -> None:
    app_file = tmp_path / "failing.py"
    app_file.write_text(FAILING)
    journal = tmp_path / "j.db"
    res = invoke("run", app_file, "--input", '{"n": 1}', "--run-id", "r-fail", "--journal", journal)
    assert res.exit_code == 1
    assert "run 'r-fail' failed: agent 'second'" in res.stderr
    assert "TerminalError: boom at 2" in res.stderr
    assert outputs_of(res.stdout) == {"first": {"n": 2}}
    assert show_json("r-fail", journal)["status"] == "failed"


def test_run_with_a_known_id_returns_its_recorded_result(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path), tmp_path / "j.db"
    assert invoke("run", app_file, "-i", '{"title": "a"}', "--run-id", "same", "--journal", journal).exit_code == 0
    again = invoke("run", app_file, "-i", '{"title": "a"}', "--run-id", "same", "--journal", journal)
    assert again.exit_code == 0
    assert outputs_of(again.stdout)["writer"] == {"text": "about a"}
    clash = invoke("run", app_file, "-i", '{"title": "b"}', "--run-id", "same", "--journal", journal)
    assert clash.exit_code == 1
    assert "already used" in clash.stderr and "Traceback" not in clash.output


# -- roost runs list / show ---------------------------------------------------------------------


def test_runs_list_and_show(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path), tmp_path / "j.db"
    for run_id in ("r-a", "r-b"):
        assert invoke("run", app_file, "-i", '{"title": "t"}', "--run-id", run_id, "--journal", journal).exit_code == 0

    listed = invoke("runs", "list", "--journal", journal)
    assert listed.exit_code == 0
    assert "r-a" in listed.stdout and "r-b" in listed.stdout
    assert listed.stdout.count("completed") == 2 and "pipeline" in listed.stdout
    limited = invoke("runs", "list", "--limit", "1", "--journal", journal)
    assert "r-b" in limited.stdout and "r-a" not in limited.stdout  # newest first

    shown = invoke("runs", "show", "r-a", "--journal", journal)
    assert shown.exit_code == 0
    for text in ("completed", "writer", "editor", "publisher", "activations", "steps of publisher", '{"title":"t"}'):
        assert text in shown.stdout

    record = show_json("r-a", journal)
    assert record["run_id"] == "r-a" and record["status"] == "completed" and record["app"] == "pipeline"
    acts = record["activations"]
    assert isinstance(acts, list)
    assert [a["agent"] for a in acts] == ["writer", "editor", "publisher"]
    assert acts[2]["output"] == {"text": "ABOUT T", "words": 2}
    assert acts[0]["steps"][0]["kind"] == "step" and acts[0]["steps"][0]["status"] == "done"


def test_runs_list_never_cuts_run_ids(tmp_path: Path) -> None:
    """At any width the run ids show whole, each on one line: the other columns wrap instead (and
    only when even those cannot fit does the table grow wider than the terminal)."""
    app_file, journal = write_app(tmp_path), tmp_path / "j.db"
    ids = ["order-2024-11-29-" + "7" * 40, "checkout-0123456789abcdef0123456789abcdef", "r-1"]
    for run_id in ids:
        assert invoke("run", app_file, "-i", '{"title": "t"}', "--run-id", run_id, "--journal", journal).exit_code == 0
    for columns in (60, 80, 120, 160):
        listed = invoke("runs", "list", "--journal", journal, env={"COLUMNS": str(columns)})
        assert listed.exit_code == 0, listed.output
        for run_id in ids:
            assert run_id in listed.stdout, (columns, listed.stdout)
        widest = max(len(line) for line in listed.stdout.splitlines())
        if columns >= 120:  # the narrowest columns beside a 57-character id fit (in 109): so does the table
            assert widest <= columns, listed.stdout
        assert listed.stdout.count("completed") == 3


def test_a_failed_run_shows_the_users_traceback(tmp_path: Path) -> None:
    app_file = tmp_path / "failing.py"
    app_file.write_text(FAILING)
    line = FAILING.splitlines().index('    raise TerminalError(f"boom at {x.n}")') + 1
    where = f'File "{app_file}", line {line}, in boom'
    journal = tmp_path / "j.db"
    res = invoke("run", app_file, "--input", '{"n": 1}', "--run-id", "r-tb", "--journal", journal)
    assert res.exit_code == 1
    assert f"raised at {app_file}:{line}, in boom" in res.stderr and where in res.stderr
    shown = invoke("runs", "show", "r-tb", "--journal", journal, env={"COLUMNS": "300"})
    assert shown.exit_code == 0
    assert where in shown.stdout and "TerminalError: boom at 2" in shown.stdout
    assert "/roost/" not in shown.stdout.split("where it was raised")[1].split("activations")[0]
    error = show_json("r-tb", journal)["error"]
    assert isinstance(error, dict) and where in error["traceback"]


def test_runs_list_without_a_journal(tmp_path: Path) -> None:
    res = invoke("runs", "list", "--journal", tmp_path / "none.db")
    assert res.exit_code == 0
    assert "no runs" in res.stdout
    assert not (tmp_path / "none.db").exists()


def test_unknown_run_id_exits_1_with_a_message(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    assert invoke("run", write_app(tmp_path), "-i", '{"title": "t"}', "--journal", journal).exit_code == 0
    for args in (("runs", "show", "nope"), ("runs", "resume", "nope"), ("resolve", "nope", "editor", "true")):
        res = invoke(*args, "--journal", journal)
        assert res.exit_code == 1, args
        assert "no run with id 'nope'" in res.stderr
        assert "Traceback" not in res.output
    missing = invoke("runs", "show", "r", "--journal", tmp_path / "missing.db")
    assert missing.exit_code == 1 and "no journal at" in missing.stderr


# -- approvals: resolve and resume -------------------------------------------------------------


def _start_run(app_file: Path, journal: Path, run_id: str, out: Path) -> subprocess.Popen[bytes]:
    return spawn({**os.environ, "COLUMNS": "200"}, out, None, "run", app_file, "--input", '{"title": "owls"}',
                 "--run-id", run_id, "--journal", journal)


def test_resolve_resumes_an_orphaned_run(tmp_path: Path) -> None:
    app_file, journal, out = write_app(tmp_path, approval=True), tmp_path / "j.db", tmp_path / "run.out"
    proc = _start_run(app_file, journal, "r-orphan", out)
    try:
        text = wait_for(out, "waiting for approval of 'editor'", proc)
        assert "roost resolve r-orphan editor true|false" in text
        assert f"--journal {journal}" in text
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert show_json("r-orphan", journal)["waiting_on"] == ["editor"]

    res = invoke("resolve", "r-orphan", "editor", "true", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert "resuming it here" in res.stdout
    assert outputs_of(res.stdout)["publisher"] == {"text": "ABOUT OWLS", "words": 2}

    record = show_json("r-orphan", journal)
    assert record["status"] == "completed" and record["waiting_on"] == []
    shown = invoke("runs", "show", "r-orphan", "--journal", journal)
    assert "completed" in shown.stdout


def test_resolve_while_the_run_process_lives(tmp_path: Path) -> None:
    app_file, journal, out = write_app(tmp_path, approval=True), tmp_path / "j.db", tmp_path / "run.out"
    proc = _start_run(app_file, journal, "r-live", out)
    try:
        wait_for(out, "waiting for approval of 'editor'", proc)
        res = invoke("resolve", "r-live", "editor", "false", "--journal", journal)
        assert res.exit_code == 0, res.output
        assert f"the process running it (pid {proc.pid}) will continue" in res.stdout
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc, signal.SIGKILL)
    text = out.read_text()
    assert "rejected  editor" in text
    outputs = outputs_of(text)
    assert "editor" in outputs and "publisher" not in outputs  # rejected: nothing downstream
    assert show_json("r-live", journal)["status"] == "completed"
    again = invoke("resolve", "r-live", "editor", "true", "--journal", journal)
    assert again.exit_code == 1 and "nothing waits for 'editor'" in again.stderr


async def _leave_waiting(app_file: Path, journal: Path, run_id: str) -> None:
    """Start a run that waits for approval, then close its runtime as a stopped process would."""
    app = load_app(str(app_file))
    app.journal = journal
    try:
        handle = await app.start({"title": "owls"}, run_id)
        assert await handle.approval(timeout=10) == "editor"
    finally:
        await app.aclose()


async def _resolve_only(journal: Path, run_id: str) -> None:
    async with (rt := LocalRuntime(journal, resume=False)):
        await rt.resolve(run_id, "editor", True)


def test_runs_resume(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path, approval=True), tmp_path / "j.db"
    asyncio.run(_leave_waiting(app_file, journal, "r-stopped"))

    listed = invoke("runs", "list", "--journal", journal)
    assert "waiting (orphaned)" in listed.stdout
    shown = invoke("runs", "show", "r-stopped", "--journal", journal)
    assert "waiting on" in shown.stdout and "roost resolve r-stopped editor true|false" in shown.stdout

    asyncio.run(_resolve_only(journal, "r-stopped"))
    res = invoke("runs", "resume", "r-stopped", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert outputs_of(res.stdout)["publisher"] == {"text": "ABOUT OWLS", "words": 2}
    assert show_json("r-stopped", journal)["status"] == "completed"

    again = invoke("runs", "resume", "r-stopped", "--journal", journal)  # finished: reports its result
    assert again.exit_code == 0 and "run id: r-stopped" in again.stdout


def test_resolve_and_resume_with_explicit_app(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path, approval=True), tmp_path / "j.db"
    asyncio.run(_leave_waiting(app_file, journal, "r-moved"))
    moved = tmp_path / "moved" / "pipeline.py"
    moved.parent.mkdir()
    app_file.rename(moved)

    res = invoke("resolve", "r-moved", "editor", '{"approved": true}', "--journal", journal)
    assert res.exit_code == 1 and "not found" in res.stderr  # the recorded app file is gone

    res = invoke("runs", "resume", "r-moved", "--app", f"{moved}:pipeline", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert outputs_of(res.stdout)["publisher"] == {"text": "ABOUT OWLS", "words": 2}

    other = write_app(tmp_path, name="other", file="other.py")
    asyncio.run(_leave_waiting(moved, journal, "r-moved-2"))
    asyncio.run(_resolve_only(journal, "r-moved-2"))
    wrong = invoke("runs", "resume", "r-moved-2", "--app", other, "--journal", journal)
    assert wrong.exit_code == 1 and "belongs to app 'pipeline'" in wrong.stderr


def test_resolve_parses_json_values(tmp_path: Path) -> None:
    from roost.cli import _parse_value

    assert _parse_value("true") is True
    assert _parse_value("3") == 3
    assert _parse_value('{"a": [1]}') == {"a": [1]}
    assert _parse_value("looks good") == "looks good"


# -- loading apps --------------------------------------------------------------------------------


def test_load_app_by_file_and_attr(tmp_path: Path) -> None:
    app_file = write_app(tmp_path)
    app = load_app(str(app_file))
    assert isinstance(app, App) and app.name == "pipeline"
    assert app.app_ref == str(app_file.resolve())
    assert load_app(f"{app_file}:pipeline").name == "pipeline"
    assert split_ref("a/b.py:app") == ("a/b.py", "app")
    assert split_ref("a/b.py") == ("a/b.py", None)
    # each load is a fresh module, never __main__ (the file's main block would raise)
    one, two = import_file(app_file), import_file(app_file)
    assert one.__name__ != two.__name__ and "__main__" not in (one.__name__, two.__name__)


def test_load_app_errors(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    res = invoke("run", tmp_path / "missing.py", "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "not found" in res.stderr

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    res = invoke("run", empty, "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "defines no roost.App" in res.stderr

    res = invoke("run", f"{write_app(tmp_path)}:writer", "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "is not a roost.App" in res.stderr
    res = invoke("run", f"{write_app(tmp_path)}:nothing", "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "no attribute 'nothing'" in res.stderr

    broken = tmp_path / "broken.py"  # a RoostError while building the app: message, no traceback
    broken.write_text("from roost import App\napp = App([])\n")
    res = invoke("run", broken, "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "needs at least one agent" in res.stderr
    assert "Traceback" not in res.output

    several = tmp_path / "several.py"
    several.write_text(PIPELINE.replace("{approval}", "").replace("{name}", "one")
                       + "\nsecond = App([writer, editor, publisher], name='two')\n")
    res = invoke("run", several, "-i", "{}", "--journal", journal)
    assert res.exit_code == 1 and "several roost.App instances (pipeline, second)" in res.stderr
    assert load_app(str(several), prefer_name="two").name == "two"
    several.write_text(several.read_text() + "\napp = second\n")
    assert load_app(str(several)).name == "two"  # 'app' wins when several
    assert "Traceback" not in res.output


def test_load_apps(tmp_path: Path) -> None:
    """Every App of a file (once each, whatever globals refer to it), or the one ATTR names."""
    several = tmp_path / "several.py"
    several.write_text(PIPELINE.replace("{approval}", "").replace("{name}", "one")
                       + "\nsecond = App([writer], name='two')\napp = second\n")
    assert [app.name for app in load_apps(str(several))] == ["one", "two"]
    assert [app.name for app in load_apps(f"{several}:second")] == ["two"]
    several.write_text(several.read_text() + "\nthird = App([writer], name='two')\n")
    with pytest.raises(CliError, match="several roost.App instances named 'two'"):
        load_apps(str(several))
    assert [app.name for app in load_apps(f"{several}:third")] == ["two"]


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and "0.1.0" in res.stdout


# -- prod mode and roost serve without a server ----------------------------------------------------


@pytest.fixture
def no_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No project settings and no ROOST_* variables: the defaults of load_settings()."""
    for name in list(os.environ):
        if name.startswith("ROOST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the restate settings at loopback ports nothing listens on; the admin URL."""
    from roost.runtime.restate._server import free_port

    admin = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ROOST_RESTATE_ADMIN", admin)
    monkeypatch.setenv("ROOST_RESTATE_INGRESS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ROOST_RESTATE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    return admin


def test_temporal_commands_without_a_temporal_server(no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporal runtime is the configured one, but nothing listens at its address: each command
    says so (naming 'roost dev temporal') and exits 1."""
    pytest.importorskip("temporalio")
    from roost.runtime.restate._server import free_port

    app_file = write_app(no_settings)
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("ROOST_RUNTIME", "temporal")
    monkeypatch.setenv("ROOST_TEMPORAL_ADDRESS", address)
    for args in (("serve", app_file), ("run", app_file, "--prod", "-i", '{"title": "t"}'),
                 ("runs", "list", "--runtime", "temporal"), ("runs", "show", "r", "--runtime", "temporal"),
                 ("runs", "resume", "r", "--runtime", "temporal"), ("resolve", "r", "editor", "true", "--runtime", "temporal")):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert f"cannot reach Temporal at {address}" in res.stderr and "roost dev temporal" in res.stderr, args
        assert "Traceback" not in res.output
    monkeypatch.setenv("ROOST_MODE", "prod")  # the runs commands default to the configured runtime
    res = invoke("runs", "list")
    assert res.exit_code == 1 and f"cannot reach Temporal at {address}" in res.stderr
    monkeypatch.delenv("ROOST_MODE")  # the local journal by default: the error says how to read Temporal's runs
    res = invoke("runs", "show", "r")
    assert res.exit_code == 1 and "no journal at" in res.stderr and "add --runtime temporal" in res.stderr


def test_serve_options_of_the_other_runtime(no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_file = write_app(no_settings)
    monkeypatch.setenv("ROOST_RUNTIME", "temporal")
    res = invoke("serve", app_file, "--endpoint", "http://127.0.0.1:9")
    assert res.exit_code == 2 and "--endpoint does not apply to Temporal" in res.stderr
    res = invoke("serve", app_file, "--runtime", "restate", "--address", "127.0.0.1:9", "--task-queue", "q")
    assert res.exit_code == 2 and "--address and --task-queue do not apply to Restate" in res.stderr


def test_run_prod_on_the_local_runtime(no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_file, journal = write_app(no_settings), no_settings / "j.db"
    monkeypatch.setenv("ROOST_RUNTIME", "local")
    res = invoke("run", app_file, "--mode", "prod", "-i", '{"title": "owls"}', "--run-id", "r-p", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert outputs_of(res.stdout)["publisher"] == {"text": "ABOUT OWLS", "words": 2}
    monkeypatch.setenv("ROOST_MODE", "prod")
    assert "r-p" in invoke("runs", "list", "--journal", journal).stdout  # ROOST_MODE=prod + local runtime
    res = invoke("serve", app_file)
    assert res.exit_code == 2 and "nothing to serve" in res.stderr
    res = invoke("run", app_file, "--prod", "--mode", "local", "-i", "{}")
    assert res.exit_code == 2 and "contradict" in res.output


def test_serve_without_a_restate_server(no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = _unreachable(monkeypatch)
    res = invoke("serve", write_app(no_settings))
    assert res.exit_code == 1
    assert f"cannot reach Restate's admin API at {admin}" in res.stderr
    assert "roost dev restate" in res.stderr and "Traceback" not in res.output


def test_restate_commands_without_a_restate_server(no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = _unreachable(monkeypatch)
    app_file = write_app(no_settings)
    for args in (("runs", "list"), ("runs", "show", "r"), ("runs", "resume", "r"), ("resolve", "r", "editor", "true")):
        res = invoke(*args, "--runtime", "restate")
        assert res.exit_code == 1, (args, res.output)
        assert "cannot reach Restate" in res.stderr and "roost dev restate" in res.stderr, args
        assert "Traceback" not in res.output
    res = invoke("run", app_file, "--prod", "-i", '{"title": "t"}')
    assert res.exit_code == 1 and "cannot reach Restate" in res.stderr and admin in res.stderr
    assert "Traceback" not in res.output
    monkeypatch.setenv("ROOST_MODE", "prod")  # restate (the default prod runtime) becomes the default
    res = invoke("runs", "list", "--journal", no_settings / "none.db")
    assert res.exit_code == 1 and "cannot reach Restate" in res.stderr


def test_help_documents_prod_mode() -> None:
    assert "ROOST_MODE=prod" in " ".join(invoke("runs", "list", "--help").stdout.split())
    text = " ".join(invoke("run", "--help").stdout.split())
    assert "--prod" in text and "--mode" in text
    text = " ".join(invoke("serve", "--help").stdout.split())
    assert "--endpoint" in text and "--admin" in text and "SIGTERM" in text
    assert "--address" in text and "--namespace" in text and "--task-queue" in text and "Temporal" in text
    assert "local|restate|temporal" in " ".join(invoke("resolve", "--help").stdout.split())
    text = " ".join(invoke("dev", "temporal", "--help").stdout.split())
    assert "--port" in text and "--dir" in text and ".roost/temporal" in text


def test_progress_view_of_a_polled_prod_run(tmp_path: Path) -> None:
    """A prod runtime's record (no events, no steps): finished activations and what the run waits on
    come from the polled record, with --runtime in the resolve hint."""
    import io

    from rich.console import Console

    from roost._cli_view import ProgressView, run_detail
    from roost.result import ActivationRecord, RunRecord

    compiled = load_app(str(write_app(tmp_path, approval=True))).compiled
    out = io.StringIO()
    view = ProgressView(Console(file=out, width=200), "r-9", compiled, runtime_hint="restate", polled=True)
    record = RunRecord("r-9", "pipeline", "waiting", "restate", activations=[
        ActivationRecord("writer:entry", "writer", "entry", "completed", started_at=1.0, finished_at=1.5, attempts=1,
                         output={"text": "x"}),
        ActivationRecord("editor:abc", "editor", "?", "pending"),
    ], waiting_on=["editor"])
    view.update(record)
    view.update(record)  # printed once
    text = out.getvalue()
    assert text.count("completed writer") == 1
    assert "waiting for approval of 'editor': roost resolve r-9 editor true|false --runtime restate" in text
    assert view.rows["editor:abc"].status == "waiting"

    out = io.StringIO()
    Console(file=out, width=200).print(run_detail(record, compiled, runtime_hint="restate"))
    assert "roost resolve r-9 editor true|false --runtime restate" in out.getvalue()
    assert "waiting" in out.getvalue().split("editor", 2)[-1]


# -- roost dev: ports in use ----------------------------------------------------------------------


@contextlib.contextmanager
def _listening() -> Iterator[int]:
    """A port of 127.0.0.1 that a socket of this test listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_dev_restate_refuses_ports_in_use_naming_them(tmp_path: Path) -> None:
    from roost.runtime.restate._server import free_port

    with _listening() as ingress, _listening() as node:
        # The check comes before the binary is looked for: none is needed here.
        res = invoke("dev", "restate", "--ingress-port", str(ingress), "--admin-port", str(free_port()),
                     "--node-port", str(node), "--data", tmp_path / "data",
                     env={"ROOST_RESTATE_SERVER": str(tmp_path / "no-such-binary")})
    assert res.exit_code == 1
    text = " ".join(res.stderr.split())
    assert f"ports {ingress} (--ingress-port) and {node} (--node-port) of 127.0.0.1 are in use" in text
    assert "--ingress-port PORT --node-port PORT" in text and "running" not in res.output
    assert not (tmp_path / "data").exists()


def test_dev_temporal_refuses_a_port_in_use(tmp_path: Path) -> None:
    pytest.importorskip("temporalio")
    with _listening() as port:
        res = invoke("dev", "temporal", "--port", str(port), "--dir", tmp_path / "t")
    assert res.exit_code == 1
    text = " ".join(res.stderr.split())
    assert f"port {port} (--port) of 127.0.0.1 is in use" in text and "--port PORT" in text
    assert "running" not in res.output


def test_dev_servers_check_their_ports_before_starting(tmp_path: Path) -> None:
    """A server whose port is taken never starts (the program there would answer for it)."""
    from roost.runtime.restate._server import RestateServer, RestateServerError
    from roost.runtime.temporal._server import TemporalDevServer, TemporalServerError

    with _listening() as port:
        server = RestateServer(tmp_path / "r", admin_port=port, binary=tmp_path / "no-such-binary")
        with pytest.raises(RestateServerError, match=f"port {port} \\(admin\\) of 127.0.0.1 is in use"):
            server.start()
        assert server.pid is None
        temporal = TemporalDevServer(tmp_path / "t", port=port, binary=tmp_path / "no-such-binary")
        with pytest.raises(TemporalServerError, match=f"port {port} \\(frontend\\) of 127.0.0.1 is in use"):
            temporal.start()


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_a_run_another_process_runs(tmp_path: Path) -> None:
    app_file, journal, out = write_app(tmp_path, approval=True), tmp_path / "j.db", tmp_path / "run.out"
    proc = _start_run(app_file, journal, "r-cancel-live", out)
    try:
        wait_for(out, "waiting for approval of 'editor'", proc)
        res = invoke("runs", "cancel", "r-cancel-live", "--reason", "wrong topic", "--journal", journal)
        assert res.exit_code == 0, res.output
        assert "r-cancel-live is cancelled" in res.stdout
        proc.wait(timeout=15)  # the process running it carried the cancel out, and ended by itself
    finally:
        stop(proc, signal.SIGKILL)
    record = show_json("r-cancel-live", journal)
    assert record["status"] == "cancelled" and record["waiting_on"] == []
    assert "publisher" not in outputs_of(out.read_text())
    again = invoke("runs", "cancel", "r-cancel-live", "--journal", journal)
    assert again.exit_code == 0 and "is cancelled" in again.stdout  # cancelling a cancelled run: no error


def test_cancel_an_orphaned_run_and_a_finished_one(tmp_path: Path) -> None:
    app_file, journal, out = write_app(tmp_path, approval=True), tmp_path / "j.db", tmp_path / "run.out"
    proc = _start_run(app_file, journal, "r-cancel-orphan", out)
    try:
        wait_for(out, "waiting for approval of 'editor'", proc)
    finally:
        stop(proc, signal.SIGKILL)
    res = invoke("runs", "cancel", "r-cancel-orphan", "--journal", journal)
    assert res.exit_code == 0, res.output
    assert "r-cancel-orphan is cancelled" in res.stdout
    assert show_json("r-cancel-orphan", journal)["status"] == "cancelled"

    plain = write_app(tmp_path, name="plain", file="plain.py")  # no approval: it completes
    done = invoke("run", plain, "--input", '{"title": "owls"}', "--run-id", "r-done", "--journal", journal)
    assert done.exit_code == 0, done.output
    refused = invoke("runs", "cancel", "r-done", "--journal", journal)
    assert refused.exit_code == 1 and "nothing to cancel" in refused.stderr
    missing = invoke("runs", "cancel", "r-nope", "--journal", journal)
    assert missing.exit_code == 1
