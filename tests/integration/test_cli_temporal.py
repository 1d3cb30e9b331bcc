"""The ``roost`` command line against a real Temporal dev server: ``roost serve`` (a worker),
``roost run --prod``, ``roost runs list|show|resume --runtime temporal``, ``roost resolve --runtime
temporal``, ``roost dev temporal``, and what they say when Temporal is unreachable.

One dev server for the module (a free loopback port, a temporary directory); ``roost serve``,
``roost run --prod`` and ``roost dev temporal`` run as subprocesses, stopped by pid in ``finally``
blocks; the short commands run in-process with ``CliRunner``. Every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cli_support
from tests.apps import pipeline_source
from tests.cli_support import clean_env, outputs_of, roost, show, spawn, stop, temporal_env, wait_for, write_app

pytest.importorskip("temporalio")

from roost.runtime.temporal import TemporalDevServer  # noqa: E402
from roost.runtime.temporal._server import find_temporal, free_port  # noqa: E402

pytestmark = pytest.mark.temporal

APP_NAME = "cli_temporal_pipeline"

ENDS_WITHIN = 20.0
"""Seconds an interrupted ``roost run --prod`` gets to end by itself. It takes well under one: not
a speed bound, only one that no loaded 2-core machine should miss."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-cli")) as started:
        yield started


@pytest.fixture
def env(server: TemporalDevServer, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's dev server, no project settings."""
    return temporal_env(server.address, tmp_path)


def test_serve_run_list_show_resolve(env: dict[str, str], server: TemporalDevServer, tmp_path: Path) -> None:
    app_file = write_app(tmp_path, name=APP_NAME, approval=True)
    serve_out, run_out = tmp_path / "serve.out", tmp_path / "run.out"
    serving = spawn(env, serve_out, tmp_path, "serve", app_file)
    running: subprocess.Popen[bytes] | None = None
    try:
        text = wait_for(serve_out, "Ctrl-C stops", serving)
        assert f"worker polling Temporal at {server.address}, namespace default" in text
        assert "serving app cli_temporal_pipeline (writer, editor, publisher) on task queue " \
               "roost.cli_temporal_pipeline" in text
        assert f"ROOST_RUNTIME=temporal ROOST_TEMPORAL_ADDRESS={server.address} roost run" in text

        # roost run --prod: the run goes to Temporal; this process runs a worker too (serve=True)
        running = spawn(env, run_out, tmp_path, "run", app_file, "--prod", "--input", '{"title": "owls"}',
                        "--run-id", "cli-t1")
        text = wait_for(run_out, "waiting for approval of 'editor'", running)
        assert "roost resolve cli-t1 editor true|false --runtime temporal" in text
        assert "a worker in this process runs the app (task queue roost.cli_temporal_pipeline" in text

        cli_support.assert_waits_for_editor(env, "cli-t1", "temporal", APP_NAME)

        resumed = roost(env, "runs", "resume", "cli-t1", "--runtime", "temporal")
        assert resumed.exit_code == 0, resumed.output
        assert "Temporal resumes runs by itself" in resumed.stdout and "roost serve" in resumed.stdout
        assert f"on Temporal at {server.address}" in resumed.stdout and "it is waiting" in resumed.stdout

        cli_support.approve_and_finish(env, "cli-t1", "temporal", running, run_out, timeout=30)
        done = roost(env, "runs", "resume", "cli-t1", "--runtime", "temporal")
        assert done.exit_code == 0 and "is finished (completed) on Temporal" in done.stdout

        # ROOST_MODE=prod makes temporal (the configured runtime) the default; an unknown run is an error
        prod = {**env, "ROOST_MODE": "prod"}
        assert "cli-t1" in roost(prod, "runs", "list").stdout
        for args in (("runs", "show", "nope"), ("runs", "resume", "nope"), ("resolve", "nope", "editor", "true")):
            missing = roost(prod, *args)
            assert missing.exit_code == 1, (args, missing.output)
            assert f"no run with id 'nope' on Temporal at {server.address}" in missing.stderr, args
            assert "Traceback" not in missing.output
    finally:
        if running is not None:
            stop(running, signal.SIGKILL)
        code = stop(serving)
    text = serve_out.read_text()
    assert code == 0, text
    assert "stopped" in text and "Traceback" not in text

    # nothing serves the app any more: a finished run's record is still read (from its workflow's result)
    record = show(env, "cli-t1", "temporal")
    assert record["status"] == "completed" and len(record["activations"]) == 3


TWO_APPS = pipeline_source("cli_temporal_again", approval=True) + '\nsolo = App([writer], name="cli_temporal_solo")\n'


def test_interrupted_run_goes_on_under_roost_serve(env: dict[str, str], tmp_path: Path) -> None:
    """``roost run --prod`` alone runs its own worker; interrupted, the run stays on Temporal, is
    resolved while no worker runs, and ``roost serve`` (every App of the file) carries it on."""
    app_file = tmp_path / "apps.py"
    app_file.write_text(TWO_APPS)
    run_out, serve_out, solo_out = tmp_path / "run.out", tmp_path / "serve.out", tmp_path / "solo.out"
    running = spawn(env, run_out, tmp_path, "run", f"{app_file}:pipeline", "--prod", "-i", '{"title": "bats"}',
                    "--run-id", "cli-t2")
    serving: subprocess.Popen[bytes] | None = None
    solo: subprocess.Popen[bytes] | None = None
    try:
        wait_for(run_out, "waiting for approval of 'editor'", running)
        running.send_signal(signal.SIGINT)  # Ctrl-C, by its pid: it must end by itself
        try:
            interrupted = running.wait(ENDS_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {ENDS_WITHIN:.0f} s after Ctrl-C:\n{run_out.read_text()}") from None
        assert interrupted == 130, run_out.read_text()
        text = run_out.read_text()
        assert "interrupted; run cli-t2 stays on Temporal" in text
        assert "roost runs show cli-t2 --runtime temporal" in text and "Traceback" not in text

        # no worker runs it: Temporal still knows the run (not its activations), and keeps a resolution
        shown = roost(env, "runs", "show", "cli-t2", "--runtime", "temporal")
        assert shown.exit_code == 0, shown.output
        assert "running" in shown.stdout and "roost serve FILE" in shown.stdout
        rejected = roost(env, "resolve", "cli-t2", "editor", "false", "--runtime", "temporal")
        assert rejected.exit_code == 0, rejected.output
        assert "resolved editor = false for run cli-t2" in rejected.stdout
        assert "nothing serves the app right now: Temporal keeps the value" in rejected.stdout

        serving = spawn(env, serve_out, tmp_path, "serve", app_file)
        text = wait_for(serve_out, "Ctrl-C stops", serving)
        assert "serving app cli_temporal_again" in text and "serving app cli_temporal_solo" in text
        deadline = time.monotonic() + 30
        while (record := show(env, "cli-t2", "temporal"))["status"] != "completed":
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
        acts = {a["agent"]: a["status"] for a in record["activations"]}
        assert acts == {"writer": "completed", "editor": "rejected"}  # rejected: nothing downstream

        # this process only starts and follows the run: roost serve's worker runs it
        solo = spawn({**env, "ROOST_TEMPORAL_SERVE": "false"}, solo_out, tmp_path, "run", f"{app_file}:solo",
                     "--prod", "-i", '{"title": "moths"}', "--run-id", "cli-t3")
        assert solo.wait(timeout=30) == 0, solo_out.read_text()
        text = solo_out.read_text()
        assert outputs_of(text) == {"writer": {"text": "about moths"}}
        assert "this process starts and follows the run" in text
    finally:
        for proc in (running, solo):
            if proc is not None:
                stop(proc, signal.SIGKILL)
        code = None if serving is None else stop(serving)
    assert code == 0, serve_out.read_text()


def test_unreachable_temporal(tmp_path: Path) -> None:
    """Nothing listens at the address: every command says so, names 'roost dev temporal' and exits 1."""
    address = f"127.0.0.1:{free_port()}"
    env = clean_env(ROOST_RUNTIME="temporal", ROOST_TEMPORAL_ADDRESS=address, ROOST_JOURNAL=str(tmp_path / "j.db"))
    app_file = write_app(tmp_path, name=APP_NAME, approval=True)
    for args in (("serve", app_file), ("run", app_file, "--prod", "-i", '{"title": "t"}')):
        out = tmp_path / "out.txt"
        proc = spawn(env, out, tmp_path, *args)
        try:
            code = proc.wait(timeout=30)
        finally:
            stop(proc, signal.SIGKILL)
        text = out.read_text()
        assert code == 1, (args, text)
        assert f"cannot reach Temporal at {address}" in text and "roost dev temporal" in text, args
        assert "Traceback" not in text
    for command in (("runs", "list"), ("runs", "show", "r"), ("runs", "resume", "r"), ("resolve", "r", "editor", "true")):
        res = roost(env, *command, "--runtime", "temporal")
        assert res.exit_code == 1, (command, res.output)
        assert f"cannot reach Temporal at {address}" in res.stderr and "roost dev temporal" in res.stderr, command


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_roost_dev_temporal_runs_until_sigterm(server: TemporalDevServer, tmp_path: Path) -> None:
    port, base = free_port(), tmp_path / "dev"
    out = tmp_path / "dev.out"
    env = clean_env()
    busy = roost(env, "dev", "temporal", "--port", str(server.port), "--dir", tmp_path / "busy")
    assert busy.exit_code == 1 and f"port {server.port} (--port) of 127.0.0.1 is in use" in busy.stderr

    proc = spawn(env, out, tmp_path, "dev", "temporal", "--port", str(port), "--dir", base)
    try:
        text = wait_for(out, "Ctrl-C stops it.", proc)
        assert f"address    127.0.0.1:{port}" in text
        assert f"export ROOST_RUNTIME=temporal ROOST_TEMPORAL_ADDRESS=127.0.0.1:{port}" in text
        assert "namespace  default (finished runs kept 7d: the retention setting)" in text
        described = subprocess.run([str(find_temporal()), "operator", "namespace", "describe", "--address",
                                    f"127.0.0.1:{port}", "--namespace", "default", "-o", "json"],
                                   capture_output=True, text=True, timeout=30, check=True)
        assert '"workflowExecutionRetentionTtl": "604800s"' in described.stdout  # the dev server's own: 1 day
        listed = roost(clean_env(ROOST_TEMPORAL_ADDRESS=f"127.0.0.1:{port}"), "runs", "list", "--runtime", "temporal")
        assert listed.exit_code == 0, listed.output
        assert f"no runs on Temporal at 127.0.0.1:{port} (namespace default)" in listed.stdout
    finally:
        code = stop(proc, timeout=20)
    text = out.read_text()
    assert code == 0, text
    assert "the Temporal dev server stopped" in text and "Traceback" not in text
    assert (base / "temporal.db").is_file() and (base / "temporal.log").is_file()
    assert not _listening(port)
