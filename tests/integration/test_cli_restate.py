"""The ``roost`` command line against a real restate-server: ``roost serve``, ``roost run --prod``,
``roost runs list|show|resume --runtime restate`` and ``roost resolve --runtime restate``.

One server for the module (free loopback ports, a temporary data directory); ``roost serve`` and
``roost run --prod`` run as subprocesses, the short commands in-process with ``CliRunner``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roost.cli import cli
from tests.apps import pipeline_source
from tests.restate_support import start_test_server

pytestmark = pytest.mark.restate

APP = pipeline_source("cli_restate_pipeline", approval=True)


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
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    return {
        **base,
        "ROOST_RUNTIME": "restate",
        "ROOST_RESTATE_INGRESS": server.ingress_url,
        "ROOST_RESTATE_ADMIN": server.admin_url,
        "ROOST_RESTATE_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "ROOST_JOURNAL": str(tmp_path / "unused.db"),  # a local journal must not be touched
        "COLUMNS": "200",
    }


def roost(env: dict[str, str], *args: str | Path) -> Result:
    """A short command, in this process with ``env``."""
    cleared = {k: None for k in os.environ if k.startswith("ROOST_") and k not in env}
    return CliRunner().invoke(cli, [str(a) for a in args], env={**cleared, **env}, catch_exceptions=False)


def spawn(env: dict[str, str], out: Path, cwd: Path, *args: str | Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "roost.cli", *map(str, args)], stdout=sink,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)


def wait_for(out: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        printed = out.read_text() if out.exists() else ""
        if text in printed:
            return printed
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not printed (exit code {proc.poll()}); output so far:\n{out.read_text()}")


def outputs_of(output: str) -> dict[str, object]:
    start = output.index("outputs:\n") + len("outputs:\n")
    end = output.index("\nrun id:", start)
    parsed: dict[str, object] = json.loads(output[start:end])
    return parsed


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def test_serve_run_list_show_resolve(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_file = tmp_path / "pipeline.py"
    app_file.write_text(APP)
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

        listed = roost(env, "runs", "list", "--runtime", "restate")
        assert listed.exit_code == 0, listed.output
        assert "cli-r1" in listed.stdout and "cli_restate_pipeline" in listed.stdout and "waiting" in listed.stdout

        shown = roost(env, "runs", "show", "cli-r1", "--runtime", "restate")
        assert shown.exit_code == 0, shown.output
        assert "roost resolve cli-r1 editor true|false --runtime restate" in shown.stdout
        record = json.loads(roost(env, "runs", "show", "cli-r1", "--runtime", "restate", "--json").stdout)
        assert record["runtime"] == "restate" and record["status"] == "waiting"
        assert record["waiting_on"] == ["editor"]
        acts = {a["agent"]: a for a in record["activations"]}
        assert acts["writer"]["status"] == "completed" and acts["writer"]["output"] == {"text": "about owls"}
        assert acts["editor"]["status"] == "pending"

        resumed = roost(env, "runs", "resume", "cli-r1", "--runtime", "restate")
        assert resumed.exit_code == 0, resumed.output
        assert "Restate resumes runs by itself" in resumed.stdout and "roost serve" in resumed.stdout

        resolved = roost(env, "resolve", "cli-r1", "editor", "true", "--runtime", "restate")
        assert resolved.exit_code == 0, resolved.output
        assert "resolved editor = true for run cli-r1" in resolved.stdout

        assert running.wait(timeout=15) == 0, run_out.read_text()
        text = run_out.read_text()
        assert outputs_of(text) == {
            "writer": {"text": "about owls"},
            "editor": {"text": "ABOUT OWLS"},
            "publisher": {"text": "ABOUT OWLS", "words": 2},
        }
        assert "completed publisher" in text and "run id: cli-r1" in text

        record = json.loads(roost(env, "runs", "show", "cli-r1", "--runtime", "restate", "--json").stdout)
        assert record["status"] == "completed" and record["waiting_on"] == []
        again = roost(env, "resolve", "cli-r1", "editor", "true", "--runtime", "restate")
        assert again.exit_code == 1 and "nothing waits for 'editor'" in again.stderr
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
    unserved = roost(env, "runs", "show", "cli-r1", "--runtime", "restate", "--json")
    assert unserved.exit_code == 0 and json.loads(unserved.stdout)["status"] == "completed"
    resumed = roost(env, "runs", "resume", "cli-r1", "--runtime", "restate")  # read from the admin API
    assert resumed.exit_code == 0 and "finished" in resumed.stdout


def test_run_rejected_and_restarted_endpoint(env: dict[str, str], tmp_path: Path) -> None:
    """A run that waits survives its endpoint going away: ``roost serve`` again, resolve, it ends."""
    app_file = tmp_path / "pipeline.py"
    app_file.write_text(APP.replace("cli_restate_pipeline", "cli_restate_again"))
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
    app_file = tmp_path / "pipeline.py"
    app_file.write_text(APP.replace("cli_restate_pipeline", "cli_restate_self"))
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
