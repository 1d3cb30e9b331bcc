"""``roost run --prod`` on Restate stopped by Ctrl-C (SIGINT) or SIGTERM, against a real restate-server.

The process must end by itself, with one line on stderr, no traceback and exit status 128 + the
signal, whatever the run was doing in it (waiting for an approval, or running a sync step in a
thread); the run stays on Restate and finishes once its app is served again (here by the same
command, which attaches to the run). Each process is signalled by its own pid, once the run is in
flight there. The checks are tests/signals_support.py's, shared with Temporal's.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.runtime.restate._server import RestateServer
from tests.cli_support import restate_env
from tests.restate_support import start_test_server
from tests.signals_support import SIGNALS, Stopping, check_run_in_a_long_sync_step, check_run_waiting_for_an_approval

pytestmark = pytest.mark.restate

RESTATE = Stopping(runtime="restate", app_prefix="", ends_within=15.0,  # it takes well under one second
                   says=lambda sig, run_id: f"run {run_id} stays on Restate")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    with start_test_server(tmp_path_factory.mktemp("restate-signals")) as started:
        yield started


@pytest.fixture
def env(server: RestateServer, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's server, a free endpoint port, no project settings."""
    return restate_env(server, tmp_path)


@SIGNALS
def test_run_waiting_for_an_approval(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    check_run_waiting_for_an_approval(RESTATE, sig, env, tmp_path)


@SIGNALS
def test_run_in_a_long_sync_step(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    """The step's thread cannot be stopped: the process exits without waiting for it (Restate runs
    the step again once the app is served again)."""
    check_run_in_a_long_sync_step(RESTATE, sig, env, tmp_path)
