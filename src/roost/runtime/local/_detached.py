"""Sync steps still running when what awaited them stopped: a run's timeout, a closed runtime,
Ctrl-C or SIGTERM in the ``roost`` command.

A sync step cannot be stopped: its thread runs to the end. When the activation awaiting it is
cancelled, the step is *detached*: it is journaled from its thread once it returns, on a
connection of its own, and only while its run is still this owner's (or no one's): a process
that took the run over runs the step itself, and its row is never overwritten.

Until then this runtime's owner keeps the step's run, even once the runtime has closed: its
lease is renewed and its lock file held, so neither another process nor a resume in this one
runs the step a second time meanwhile (they follow the run, and take it over once it is given
back). The last detached step of a closed runtime gives back everything its owner held.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ._busy import BUSY_MS, retry_sync
from ._lease import Owner

_log = logging.getLogger("roost.local")

Row = Callable[[Any], tuple[Any, ...]]
"""Builds the step's journal row from its result."""


class DetachedSteps:
    """The detached sync steps of one runtime instance (one owner). Thread-safe: steps are
    added on the event loop's thread and finish on their own threads."""

    def __init__(self, owner: Owner) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._runs: collections.Counter[str] = collections.Counter()  # run id -> detached steps running
        self._running: dict[int, tuple[str, str]] = {}  # token -> (run id, what)
        self._next = 0
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self.recorded: list[str] = []
        """The steps journaled after they were detached ("step 'x' of agent 'a'")."""
        self.refused: list[str] = []
        """Those that finished after another process had taken their run over: not journaled here."""

    def add(self, run_id: str, what: str, cf: Any, row: Row) -> None:
        """Detach the attempt ``cf`` (a concurrent future) of the step ``what`` of ``run_id``;
        ``row(result)`` is journaled once it returns (a failed attempt journals nothing: the step
        runs again when the run resumes)."""
        with self._lock:
            token, self._next = self._next, self._next + 1
            self._running[token] = (run_id, what)
            self._runs[run_id] += 1
            self._idle.clear()
        cf.add_done_callback(lambda done: self._finish(token, done, row))

    def running(self) -> list[str]:
        """The detached steps still running."""
        with self._lock:
            return [what for _, what in self._running.values()]

    def wait(self, timeout: float) -> bool:
        """Block until no detached step runs (True), or ``timeout`` seconds."""
        return self._idle.wait(timeout)

    def close(self) -> frozenset[str]:
        """The runtime closes: the runs it keeps for detached steps still running (its owner then
        lives on until they are journaled, and gives everything back after the last one)."""
        with self._lock:
            self._closed = True
            kept = frozenset(r for r, n in self._runs.items() if n > 0)
            if kept:
                self._owner.kept = True
            return kept

    # -- on the step's thread -------------------------------------------------------------------

    def _finish(self, token: int, cf: Any, row: Row) -> None:
        run_id, what = self._running[token]
        try:
            if not cf.cancelled() and cf.exception() is None:
                if self._journal(run_id, row(cf.result())):
                    self.recorded.append(what)
                else:
                    self.refused.append(what)
        except Exception:  # the step is not journaled: it runs again when the run resumes
            _log.warning("journaling %s of run %r after it was detached failed", what, run_id, exc_info=True)
        finally:
            self._done(token, run_id)

    def _journal(self, run_id: str, row: tuple[Any, ...]) -> bool:
        """Write ``row`` if the run is still this owner's (or no one's), in one transaction."""
        path, owner = self._owner.path, self._owner.id
        if path == ":memory:":
            return False
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_MS / 1000)

        def write() -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                found = db.execute("SELECT owner, status FROM runs WHERE run_id=?", (run_id,)).fetchone()
                ours = found is not None and found[1] == "running" and found[0] in (owner, None)
                if ours:
                    db.execute("INSERT OR REPLACE INTO journal VALUES(?,?,?,?,?,?,?,?,?,?)", row)
                db.execute("COMMIT")
                return ours
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        try:
            return retry_sync(path, write)
        finally:
            db.close()

    def _done(self, token: int, run_id: str) -> None:
        with self._lock:
            del self._running[token]
            self._runs[run_id] -= 1
            give_back = self._closed and self._runs[run_id] == 0
            if self._runs[run_id] == 0:
                del self._runs[run_id]
            last = not self._running
        try:
            if give_back:
                self._give_back(run_id, everything=last)
        finally:
            if last:
                self._idle.set()

    def _give_back(self, run_id: str, *, everything: bool) -> None:
        owner = self._owner
        if owner.path == ":memory:" or not owner.kept:
            return
        db = sqlite3.connect(owner.path, isolation_level=None, timeout=BUSY_MS / 1000)

        def release() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE runs SET owner=NULL WHERE run_id=? AND owner=? AND status='running'",
                           (run_id, owner.id))
                if everything:
                    owner.release(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        try:
            retry_sync(owner.path, release)
        except Exception:  # its lease runs out instead, and its lock file goes with the process
            _log.warning("giving back run %r after its detached steps failed", run_id, exc_info=True)
        finally:
            db.close()
            if everything:
                owner.close()
