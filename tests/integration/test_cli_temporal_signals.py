"""``roost run --prod`` on Temporal stopped by Ctrl-C (SIGINT) or SIGTERM, against a real dev server.

The process must end by itself, with one line saying where the run is, no traceback and exit
status 128 + the signal, whatever the run was doing in it (waiting for an approval, or running a
sync step in a thread); the run stays on Temporal and finishes once a worker serves its app
again (here the same command, which attaches to the run). Each process is signalled by its own
pid, once the run is in flight there. The checks are tests/signals_support.py's, shared with Restate's.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import temporal_env
from tests.signals_support import SIGNALS, Stopping, check_run_in_a_long_sync_step, check_run_waiting_for_an_approval

pytest.importorskip("temporalio")

from roost.runtime.temporal import TemporalDevServer  # noqa: E402

pytestmark = pytest.mark.temporal

TEMPORAL = Stopping(
    runtime="temporal", app_prefix="temporal_",
    ends_within=20.0,  # about one second: a step in flight gets the worker's one-second grace period
    says=lambda sig, run_id: f"{'stopped by SIGTERM' if sig == signal.SIGTERM else 'interrupted'}; "
                             f"run {run_id} stays on Temporal",
    aside="a worker in this process runs the app",  # what it says on stderr when it starts, before anything else
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-signals")) as started:
        yield started


@pytest.fixture
def env(server: TemporalDevServer, tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: the module's dev server, no project settings."""
    return temporal_env(server.address, tmp_path)


@SIGNALS
def test_run_waiting_for_an_approval(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    check_run_waiting_for_an_approval(TEMPORAL, sig, env, tmp_path)


@SIGNALS
def test_run_in_a_long_sync_step(sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:
    """The step's thread cannot be stopped: the worker gives it its grace period, then the process
    exits without waiting for it (Temporal runs the step again on the next worker)."""
    check_run_in_a_long_sync_step(TEMPORAL, sig, env, tmp_path)
