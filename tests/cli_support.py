"""Helpers for tests of the ``roost`` command line: short commands in this process (``CliRunner``),
long ones (``roost serve``, ``roost run``, ``roost dev``) as subprocesses whose output goes to a file.

    app_file = write_app(tmp_path, name="my_pipeline", approval=True)
    serving = spawn(env, tmp_path / "serve.out", tmp_path, "serve", app_file)
    try:
        wait_for(tmp_path / "serve.out", "serving app", serving)
        assert roost(env, "runs", "list").exit_code == 0
    finally:
        stop(serving)  # by its pid: SIGTERM, SIGKILL if it lingers

Every wait is bounded; a subprocess is only ever signalled through its own ``Popen``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner, Result

from roost.cli import cli
from roost.runtime._process import free_port
from tests.apps import pipeline_source

if TYPE_CHECKING:
    from roost.runtime.restate._server import RestateServer

# what tests.apps' pipeline outputs for {"title": "owls"}
OWLS = {"writer": {"text": "about owls"}, "editor": {"text": "ABOUT OWLS"},
        "publisher": {"text": "ABOUT OWLS", "words": 2}}


def write_app(tmp_path: Path, *, approval: bool = False, name: str = "pipeline", file: str = "pipeline.py") -> Path:
    """tests.apps' pipeline (App ``name``, global ``pipeline``) written to ``tmp_path / file``."""
    path = tmp_path / file
    path.write_text(pipeline_source(name, approval=approval))
    return path


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ROOST_* variable, wide columns, then ``settings``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    return {**base, "COLUMNS": "200", **settings}


def restate_env(server: RestateServer, tmp_path: Path) -> dict[str, str]:
    """:func:`clean_env` for commands on Restate: ``server``, a free endpoint port, and a local
    journal in ``tmp_path`` that must not be touched."""
    return clean_env(ROOST_RUNTIME="restate", ROOST_RESTATE_INGRESS=server.ingress_url,
                     ROOST_RESTATE_ADMIN=server.admin_url, ROOST_RESTATE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                     ROOST_JOURNAL=str(tmp_path / "unused.db"))


def temporal_env(address: str, tmp_path: Path) -> dict[str, str]:
    """:func:`clean_env` for commands on Temporal at ``address``, with a local journal in
    ``tmp_path`` that must not be touched."""
    return clean_env(ROOST_RUNTIME="temporal", ROOST_TEMPORAL_ADDRESS=address, ROOST_JOURNAL=str(tmp_path / "unused.db"))


def invoke(*args: str | Path, env: Mapping[str, str | None] | None = None) -> Result:
    """A short command, in this process (``env`` on top of this process's environment)."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def roost(env: dict[str, str], *args: str | Path) -> Result:
    """A short command, in this process with ``env``: ROOST_* variables it does not set are unset."""
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("ROOST_") and k not in env}
    return invoke(*args, env={**cleared, **env})


def spawn(env: dict[str, str], out: Path, cwd: Path | None, *args: str | Path) -> subprocess.Popen[bytes]:
    """``python -m roost.cli ARGS`` in a subprocess, stdout and stderr to the file ``out``."""
    with out.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "roost.cli", *map(str, args)], stdout=sink,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)


def wait_for(out: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Wait until ``proc`` has printed ``text`` into ``out``; all it printed. Fails if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        printed = out.read_text() if out.exists() else ""
        if text in printed:
            return printed
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not printed (exit code {proc.poll()}); output so far:\n{out.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal a process this test started (by its pid) and wait for it; SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def outputs_of(output: str) -> dict[str, object]:
    """The JSON printed between 'outputs:' and 'run id:'."""
    start = output.index("outputs:\n") + len("outputs:\n")
    end = output.index("\nrun id:", start)
    parsed: dict[str, object] = json.loads(output[start:end])
    return parsed


def show(env: dict[str, str], run_id: str, runtime: str) -> dict[str, Any]:
    """``roost runs show RUN_ID --runtime RUNTIME --json``, parsed (the command must succeed)."""
    res = roost(env, "runs", "show", run_id, "--runtime", runtime, "--json")
    assert res.exit_code == 0, res.output
    record: dict[str, Any] = json.loads(res.stdout)
    return record


# -- the approval round trip of tests.apps' pipeline (approval=True) on a prod runtime, through the CLI


def assert_waits_for_editor(env: dict[str, str], run_id: str, runtime: str, app: str) -> None:
    """``roost runs list`` and ``roost runs show`` (text and JSON) of a run of ``app`` that waits for
    the editor's approval, its writer done."""
    listed = roost(env, "runs", "list", "--runtime", runtime)
    assert listed.exit_code == 0, listed.output
    row = next((line for line in listed.stdout.splitlines() if run_id in line), "")
    assert app in row and "waiting" in row, listed.stdout
    shown = roost(env, "runs", "show", run_id, "--runtime", runtime)
    assert shown.exit_code == 0, shown.output
    assert f"roost resolve {run_id} editor true|false --runtime {runtime}" in shown.stdout, shown.stdout
    record = show(env, run_id, runtime)
    assert record["runtime"] == runtime and record["status"] == "waiting", record
    assert record["waiting_on"] == ["editor"], record
    acts = {a["agent"]: a for a in record["activations"]}
    assert acts["writer"]["status"] == "completed" and acts["writer"]["output"] == {"text": "about owls"}, acts
    assert acts["editor"]["status"] == "waiting", acts  # its output is held for the approval


def approve_and_finish(env: dict[str, str], run_id: str, runtime: str, running: subprocess.Popen[bytes],
                       run_out: Path, timeout: float) -> None:
    """``roost resolve RUN_ID editor true``; then the ``roost run`` process ``running`` ends with the
    pipeline's outputs, the run is completed, and a second resolve finds nothing waiting."""
    resolved = roost(env, "resolve", run_id, "editor", "true", "--runtime", runtime)
    assert resolved.exit_code == 0, resolved.output
    assert f"resolved editor = true for run {run_id}" in resolved.stdout, resolved.stdout
    assert running.wait(timeout=timeout) == 0, run_out.read_text()
    text = run_out.read_text()
    assert outputs_of(text) == OWLS, text
    assert "completed publisher" in text and f"run id: {run_id}" in text, text
    record = show(env, run_id, runtime)
    assert record["status"] == "completed" and record["waiting_on"] == [], record
    again = roost(env, "resolve", run_id, "editor", "true", "--runtime", runtime)
    assert again.exit_code == 1 and "nothing waits for 'editor'" in again.stderr, again.output
