"""Many processes on one journal (embedded runtime): real processes, counters outside the journal.

* keyed entity state updated from two processes loses no update;
* two processes in separate PID namespaces (as in two containers sharing a volume, each its
  own PID 1) on the same run: each step runs once, the run's counts stay right;
* a process waiting on a run takes it over when its owner is killed (kill -9), or stops
  renewing its lease (SIGSTOP), and finishes it without re-running journaled steps; the
  stopped owner, continued, notices that it lost the run and writes nothing more to it;
* six processes creating one journal at once all succeed;
* a write lock held 15 s by another process delays a run, and does not fail it.

The processes run tests/crash/multiproc_app.py (see its docstring).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ._harness import REPO, WorkerHarness

pytestmark = pytest.mark.crash

SCRIPT = str(Path(__file__).resolve().parent / "multiproc_app.py")
RUN_ID = "mp-run-1"
FINISH_TIMEOUT = 60.0  # seconds a process gets to end by itself
STEPS = ["first", "second", "third", "last"]


class Procs(WorkerHarness):
    """Processes of multiproc_app.py on one journal (or a directory of journals)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, RUN_ID)
        self.journal = root / "journal.db"

    def start(self, command: str, *args: str, name: str | None = None, prefix: list[str] | None = None,
              env: dict[str, str] | None = None, journal: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``multiproc_app.py COMMAND JOURNAL COUNTER_DIR ARGS`` (under ``prefix``, e.g. unshare)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "MP_"))}
        base.update(env or {})
        base["MP_NAME"] = name or command
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), base.get("PYTHONPATH")]))
        n = len(self.procs)
        label = f"proc{n}-{name or command}"
        out, err = self.root / f"{label}.out", self.root / f"{label}.err"
        argv = [*(prefix or []), sys.executable, SCRIPT, command, str(journal or self.journal), str(self.counter_dir),
                *args]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(argv, cwd=REPO, env=base, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.logs[proc.pid] = (out, err)
        return proc

    def touch(self, name: str, text: str = "") -> None:
        (self.counter_dir / name).write_text(text)

    def result(self, proc: subprocess.Popen[bytes], timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
        """Wait (bounded) for ``proc`` to exit 0; its last stdout line, as JSON."""
        result: dict[str, Any] = self.last_json(proc, timeout)
        return result

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.journal, timeout=30.0)) as db:
            return db.execute(sql, params).fetchall()

    def run_row(self) -> tuple[Any, ...]:
        rows = self.query("SELECT status, pending, error FROM runs WHERE run_id=?", RUN_ID)
        assert rows, "the run is not in the journal"
        return rows[0]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        for proc in p.procs:  # a SIGSTOPped process must go on to die of the SIGKILL
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        p.close()


def _pid_namespace_prefix() -> list[str] | None:
    """How to start a process in a PID namespace of its own (it is PID 1 there), if this machine lets us."""
    for prefix in (["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
                   ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]):
        try:
            probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == b"1":
            return prefix
    return None


def check_one_execution_each(procs: Procs, results: list[dict[str, Any]]) -> None:
    """Every process saw the run complete with the same outputs; each step ran to 'done' once."""
    assert [r["status"] for r in results] == ["completed"] * len(results)
    assert all(r["outputs"] == results[0]["outputs"] for r in results)
    assert procs.counts("done") == {s: 1 for s in STEPS}, procs.counters()
    assert procs.run_row() == ("completed", 0, None)


def test_keyed_state_updated_from_two_processes_loses_no_update(procs: Procs) -> None:
    workers = [procs.start("count", "100", name=f"count{i}") for i in range(2)]
    procs.touch("go")
    for proc in workers:
        assert procs.result(proc)["done"] == 100
    rows = procs.query("SELECT value FROM state WHERE agent='memo' AND key='k' AND field='count'")
    assert rows == [("200",)], f"lost updates: 2 x 100 increments ended at {rows}"


def test_two_pid_namespaces_run_each_step_of_one_run_once(procs: Procs) -> None:
    prefix = _pid_namespace_prefix()
    if prefix is None:
        pytest.skip("this machine permits no PID namespaces (unshare --pid, also in a user namespace)")
    owner = procs.start("pipe", RUN_ID, name="owner", prefix=prefix, env={"MP_BLOCK": "1"})
    procs.wait_marker(owner, "second-owner")  # the owner is inside 'second', which is not journaled yet
    joiner = procs.start("pipe", RUN_ID, name="joiner", prefix=prefix)
    procs.wait_marker(joiner, "submitted-joiner")  # the joiner found the run (started by a live process)
    procs.touch("release")
    results = [procs.result(owner), procs.result(joiner)]
    assert [r["pid"] for r in results] == [1, 1], "both processes are PID 1, each in its own namespace"
    assert procs.counts("start") == {s: 1 for s in STEPS}, "a step ran in both processes"
    check_one_execution_each(procs, results)


def test_a_waiting_process_takes_over_a_run_whose_owner_was_killed(procs: Procs) -> None:
    owner = procs.start("pipe", RUN_ID, name="owner", env={"MP_BLOCK": "1"})
    procs.wait_marker(owner, "second-owner")
    waiter = procs.start("pipe", RUN_ID, name="waiter")
    procs.wait_marker(waiter, "submitted-waiter")
    assert procs.counts("start") == {"first": 1, "second": 1}, "the waiter ran a step of a run it does not own"
    procs.kill(owner)
    result = procs.result(waiter)
    assert result["status"] == "completed"
    # 'first' was journaled before the kill: never again; 'second' was cut short: run again once.
    assert procs.counts("start") == {"first": 1, "second": 2, "third": 1, "last": 1}
    assert procs.counts("done") == {s: 1 for s in STEPS}
    assert result["outputs"]["work"]["parts"][1] == f"t:1:2@{waiter.pid}"
    assert procs.run_row() == ("completed", 0, None)


def test_a_waiting_process_takes_over_when_the_owners_lease_expires(procs: Procs) -> None:
    lease = {"ROOST_LEASE_SECONDS": "2"}
    owner = procs.start("pipe", RUN_ID, name="owner", env={**lease, "MP_BLOCK": "1"})
    procs.wait_marker(owner, "second-owner")
    waiter = procs.start("pipe", RUN_ID, name="waiter", env=lease)
    procs.wait_marker(waiter, "submitted-waiter")
    os.kill(owner.pid, signal.SIGSTOP)  # alive, but it renews nothing
    result = procs.result(waiter)
    assert result["status"] == "completed"
    assert result["outputs"]["work"]["parts"][1] == f"t:1:2@{waiter.pid}"
    # The stopped owner goes on: its 'second' ends, and it finds the run is no longer its own.
    procs.touch("release")
    os.kill(owner.pid, signal.SIGCONT)
    late = procs.result(owner)
    assert late["status"] == "completed" and late["outputs"] == result["outputs"], "the journal holds the waiter's run"
    counts = procs.counts("start")
    assert counts == {"first": 1, "second": 2, "third": 1, "last": 1}, "the owner went on after losing the run"
    assert procs.run_row() == ("completed", 0, None)
    journaled = procs.query("SELECT value FROM journal WHERE run_id=? AND kind='step' AND name='second'", RUN_ID)
    assert journaled == [(json.dumps(f"t:1:2@{waiter.pid}"),)], "the owner wrote to a run it had lost"


def test_six_processes_create_one_fresh_journal_at_once(procs: Procs) -> None:
    rounds, directory = 8, procs.root / "journals"
    directory.mkdir()
    workers = [procs.start("open", str(rounds), name=f"open{i}", journal=directory) for i in range(6)]
    procs.wait_until(None, "six processes ready", lambda: all(procs.marker(f"ready-open{i}") for i in range(6)))
    procs.touch("go", str(time.time() + 0.3))
    failures = [f for proc in workers for f in procs.result(proc)["failures"]]
    assert failures == [], f"{len(failures)} of {6 * rounds} opens failed: {failures[:5]}"


def test_a_write_lock_held_15_s_by_another_process_delays_a_run_but_does_not_fail_it(procs: Procs) -> None:
    owner = procs.start("pipe", RUN_ID, name="owner", env={"MP_BLOCK": "1"})
    procs.wait_marker(owner, "second-owner")
    procs.kill(owner)  # an unfinished run, for the next process to take over
    locker = procs.start("lock", "15", name="locker")
    procs.wait_marker(locker, "locked-locker")
    runner = procs.start("pipe", RUN_ID, name="runner")  # opens the journal and takes the run over meanwhile
    result = procs.result(runner)
    assert result["status"] == "completed"
    assert locker.wait(timeout=30) == 0, procs.stderr(locker)
    assert procs.counts("start") == {"first": 1, "second": 2, "third": 1, "last": 1}
    assert procs.counts("done") == {s: 1 for s in STEPS}
    assert procs.run_row() == ("completed", 0, None)
