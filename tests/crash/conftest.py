"""Harness for the crash tests: start tests/crash/pipeline.py in a subprocess, wait until it is
at a chosen point, kill -9 it, restart it, and read what happened (counters and journal)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PIPELINE = HERE / "pipeline.py"
REPO = HERE.parent.parent
MARKER_TIMEOUT = 20.0  # seconds to reach a kill point
FINISH_TIMEOUT = 30.0  # seconds for a (restarted) process to finish the run
RUN_ID = "crash-run-1"  # the same id in every journal, so idempotency keys compare across runs


class Harness:
    """One journal and one counter directory; the processes started on them."""

    def __init__(self, root: Path, run_id: str = RUN_ID, pipeline: Path = PIPELINE) -> None:
        self.root = root
        self.pipeline = pipeline
        self.run_id = run_id
        self.journal = root / "journal.db"
        self.counter_dir = root / "counters"
        self.counter_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, tuple[Path, Path]] = {}

    # -- processes --------------------------------------------------------------------------

    def start(self, scenario: str, *, approve: str = "auto") -> subprocess.Popen[bytes]:
        for old in self.counter_dir.glob("at-*"):
            old.unlink()  # markers of an earlier (killed) process
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        env["ROOST_CRASH_APPROVE"] = approve
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        n = len(self.procs)
        out, err = self.root / f"proc{n}-{scenario}.out", self.root / f"proc{n}-{scenario}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [sys.executable, str(self.pipeline), str(self.journal), self.run_id, str(self.counter_dir), scenario],
                cwd=REPO, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = (out, err)
        return proc

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid][1].read_text(errors="replace")[-3000:]

    def wait_until(self, proc: subprocess.Popen[bytes], what: str, check: Callable[[], bool],
                   timeout: float = MARKER_TIMEOUT) -> float:
        """Poll ``check`` (bounded); fail early if the process exits. Returns the seconds waited."""
        t0 = time.monotonic()
        while not check():
            if proc.poll() is not None:
                pytest.fail(f"pipeline exited ({proc.returncode}) before {what}:\n{self.stderr(proc)}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"pipeline did not reach {what} within {timeout} s:\n{self.stderr(proc)}")
            time.sleep(0.01)
        return time.monotonic() - t0

    def wait_marker(self, proc: subprocess.Popen[bytes], *points: str) -> None:
        for point in points:
            self.wait_until(proc, f"marker at-{point}", (self.counter_dir / f"at-{point}").exists)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.poll() is None, f"the process to kill has exited already:\n{self.stderr(proc)}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
        """Wait for the process to end the run; its JSON result line."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            pytest.fail(f"pipeline did not finish within {timeout} s:\n{self.stderr(proc)}")
        assert proc.returncode == 0, f"pipeline failed ({proc.returncode}):\n{self.stderr(proc)}"
        lines = self.logs[proc.pid][0].read_text().strip().splitlines()
        assert lines, f"pipeline printed no result:\n{self.stderr(proc)}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def run(self, scenario: str = "none", *, approve: str = "auto") -> dict[str, Any]:
        return self.finish(self.start(scenario, approve=approve))

    def close(self) -> None:
        for proc in self.procs:  # only the processes this harness started
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    # -- counters (outside the journal) -------------------------------------------------------

    def counters(self) -> dict[str, list[dict[str, Any]]]:
        """Per step ('agent.step'): the execution events its counter file holds, in order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.counter_dir.glob("*.log")):
            out[path.stem] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return out

    def counts(self, event: str) -> dict[str, int]:
        return {step: sum(e["event"] == event for e in events) for step, events in self.counters().items()}

    # -- the journal (read directly, as another process would) --------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.journal.exists():
            return []
        with closing(sqlite3.connect(self.journal, timeout=10.0)) as db:
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # the journal is being created
                raise

    def journaled_steps(self) -> set[str]:
        """'agent.step' for every step whose result is in the journal."""
        rows = self.query("SELECT activation, name FROM journal WHERE run_id=? AND kind='step' AND status='done'",
                          self.run_id)
        return {f"{activation.split(':')[0]}.{name}" for activation, name in rows}

    def journal_entries(self, agent: str, kind: str) -> list[tuple[str, str, Any]]:
        """(name, status, value) of ``agent``'s journal entries of ``kind``."""
        rows = self.query("SELECT activation, name, status, value FROM journal WHERE run_id=? AND kind=?",
                          self.run_id, kind)
        return [(n, s, v) for a, n, s, v in rows if a.split(":")[0] == agent]

    def messages(self, target: str | None = None) -> list[tuple[str, str, str]]:
        """(target, kind, status) of the run's messages (activations), in insertion order."""
        rows = self.query("SELECT target, kind, status FROM messages WHERE run_id=? ORDER BY rowid", self.run_id)
        return [r for r in rows if target is None or r[0] == target]  # type: ignore[misc]

    def run_row(self) -> tuple[Any, ...] | None:
        rows = self.query("SELECT status, owner, pending, error FROM runs WHERE run_id=?", self.run_id)
        return rows[0] if rows else None


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same pipeline run uninterrupted, in its own journal: its result and counters."""
    h = Harness(tmp_path_factory.mktemp("baseline"))
    try:
        result = h.run("none")
        return {"result": result, "starts": h.counts("start"), "dones": h.counts("done"), "counters": h.counters(),
                "messages": h.messages()}
    finally:
        h.close()
