"""The ``roost`` command line against a real restate-server: ``roost serve``, ``roost run --prod``,
``roost runs list|show|resume --runtime restate`` and ``roost resolve --runtime restate``.

One server for the module (free loopback ports, a temporary data directory); ``roost serve`` and
``roost run --prod`` run as subprocesses, the short commands in-process with ``CliRunner``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cli_support
from tests.cli_support import clean_env, outputs_of, roost, show, spawn, stop, wait_for, write_app
from tests.restate_support import start_test_server

pytestmark = pytest.mark.restate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from roost.runtime.restate._server import RestateServer

    started: RestateServer = start_test_server(tmp_path_factory.mktemp("restate-cli"))
    yield started
    started.stop()


@pytest.fixture
def env(server: object, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's server, a free endpoint port, no project settings."""
    from roost.runtime.restate._server import RestateServer, free_port

    assert isinstance(server, RestateServer)
    return clean_env(ROOST_RUNTIME="restate", ROOST_RESTATE_INGRESS=server.ingress_url,
                     ROOST_RESTATE_ADMIN=server.admin_url, ROOST_RESTATE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                     ROOST_JOURNAL=str(tmp_path / "unused.db"))  # a local journal must not be touched


def test_serve_run_list_show_resolve(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_file = write_app(tmp_path, name="cli_restate_pipeline", approval=True)
    serve_out, run_out = tmp_path / "serve.out", tmp_path / "run.out"
    serving = spawn(env, serve_out, tmp_path, "serve", app_file)
    running: subprocess.Popen[bytes] | None = None
    try:
        text = wait_for(serve_out, "serving app", serving)
        endpoint = env["ROOST_RESTATE_ENDPOINT"]
        assert f"registered {endpoint}/v/" in text and "cli_restate_pipeline" in text

        # roost run --prod: the app is served already, so this process only starts and follows the run
        running = spawn(env, run_out, tmp_path, "run", app_file, "--prod", "--input", '{"title": "owls"}',
                        "--run-id", "cli-r1")
        text = wait_for(run_out, "waiting for approval of 'editor'", running)
        assert "roost resolve cli-r1 editor true|false --runtime restate" in text
        assert f"served at {endpoint}/v/" in text

        cli_support.assert_waits_for_editor(env, "cli-r1", "restate", "cli_restate_pipeline")

        resumed = roost(env, "runs", "resume", "cli-r1", "--runtime", "restate")
        assert resumed.exit_code == 0, resumed.output
        assert "Restate resumes runs by itself" in resumed.stdout and "roost serve" in resumed.stdout

        cli_support.approve_and_finish(env, "cli-r1", "restate", running, run_out, timeout=15)
        done = roost(env, "runs", "resume", "cli-r1", "--runtime", "restate")
        assert done.exit_code == 0 and "finished" in done.stdout

        # ROOST_MODE=prod makes restate the default of the runs commands; an unknown run is an error
        missing = roost({**env, "ROOST_MODE": "prod"}, "runs", "show", "nope")
        assert missing.exit_code == 1 and "no run with id 'nope'" in missing.stderr
        missing = roost(env, "runs", "resume", "nope", "--runtime", "restate")
        assert missing.exit_code == 1 and "no run with id 'nope'" in missing.stderr
        missing = roost(env, "resolve", "nope", "editor", "true", "--runtime", "restate")
        assert missing.exit_code == 1 and "no run with id 'nope'" in missing.stderr
    finally:
        if running is not None:
            stop(running, signal.SIGKILL)
        code = stop(serving)
    assert code == 0, serve_out.read_text()
    assert "stopped" in serve_out.read_text() and "Traceback" not in serve_out.read_text()

    # nothing serves the app any more: runs are still read, from the ledgers' state via the admin API
    assert show(env, "cli-r1", "restate")["status"] == "completed"
    resumed = roost(env, "runs", "resume", "cli-r1", "--runtime", "restate")  # read from the admin API
    assert resumed.exit_code == 0 and "finished" in resumed.stdout


def test_run_rejected_and_restarted_endpoint(env: dict[str, str], tmp_path: Path) -> None:
    """A run that waits survives its endpoint going away: ``roost serve`` again, resolve, it ends."""
    app_file = write_app(tmp_path, name="cli_restate_again", approval=True)
    serve_out, run_out = tmp_path / "serve.out", tmp_path / "run.out"
    serving = spawn(env, serve_out, tmp_path, "serve", app_file)
    running: subprocess.Popen[bytes] | None = None
    try:
        wait_for(serve_out, "serving app", serving)
        running = spawn(env, run_out, tmp_path, "run", app_file, "--mode", "prod", "-i", '{"title": "bats"}',
                        "--run-id", "cli-r2")
        wait_for(run_out, "waiting for approval of 'editor'", running)
        assert stop(serving) == 0  # the endpoint goes; the run stays on Restate

        serving = spawn(env, serve_out, tmp_path, "serve", app_file)
        wait_for(serve_out, "serving app", serving)
        rejected = roost(env, "resolve", "cli-r2", "editor", "false", "--runtime", "restate")
        assert rejected.exit_code == 0, rejected.output

        assert running.wait(timeout=15) == 0, run_out.read_text()
        text = run_out.read_text()
        assert "rejected  editor" in text
        outputs = outputs_of(text)
        assert "editor" in outputs and "publisher" not in outputs  # rejected: nothing downstream
    finally:
        if running is not None:
            stop(running, signal.SIGKILL)
        code = stop(serving)
    assert code == 0, serve_out.read_text()


def test_run_prod_serves_the_app_itself_without_roost_serve(env: dict[str, str], tmp_path: Path) -> None:
    """With nothing serving the app, ``roost run --prod`` serves it from its own process."""
    app_file = write_app(tmp_path, name="cli_restate_self", approval=True)
    run_out = tmp_path / "run.out"
    running = spawn(env, run_out, tmp_path, "run", app_file, "--prod", "-i", '{"title": "moths"}', "--run-id", "cli-r3")
    try:
        text = wait_for(run_out, "waiting for approval of 'editor'", running)
        assert "served at" not in text
        resolved = roost(env, "resolve", "cli-r3", "editor", "true", "--runtime", "restate")
        assert resolved.exit_code == 0, resolved.output
        assert running.wait(timeout=15) == 0, run_out.read_text()
        assert outputs_of(run_out.read_text())["publisher"] == {"text": "ABOUT MOTHS", "words": 2}
    finally:
        stop(running, signal.SIGKILL)
