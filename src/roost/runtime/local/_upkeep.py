"""Upkeep of a journal file, off the event loop: WAL checkpoints and pruning of finished runs.

Each open journal file has one :class:`Upkeep` thread with a connection of its own. It copies
the WAL back into the database (a checkpoint) every half second, at once when a commit finds
the WAL past a quarter of ``wal_limit``, and deletes finished runs older than the retention in
small batches: at open, then every ``PRUNE_EVERY`` seconds. The queries that prune are here too,
for ``LocalRuntime.prune`` (``roost runs prune``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

_log = logging.getLogger("roost.local")

WAL_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL of a live journal stays within (see ``Journal.committed``)."""
FINISHED_RUN = ("completed", "failed", "rejected", "cancelled")
"""Run statuses that never change again: only such runs are ever pruned."""
RUN_TABLES = ("events", "messages", "journal", "promises", "cancels")
"""Every table holding rows of one run, keyed by ``run_id`` (besides ``runs``); a new one belongs here."""
PRUNE_BATCH = 50
"""Runs deleted per transaction: a batch holds the write lock for milliseconds."""
PRUNE_EVERY = 600.0
"""Seconds between prunes of a long-lived runtime (the first is when it opens)."""
PRUNE_INDEX = "CREATE INDEX IF NOT EXISTS runs_finished ON runs(finished_at)"


def ensure_prune_index(db: sqlite3.Connection) -> None:
    """The index that finds old finished runs without a scan (journals of an earlier roost lack it)."""
    db.execute(PRUNE_INDEX)


def prunable(db: sqlite3.Connection, cutoff: float, limit: int) -> list[str]:
    """Ids of up to ``limit`` finished runs that finished before ``cutoff`` (epoch seconds), oldest first."""
    marks = ",".join("?" * len(FINISHED_RUN))
    rows = db.execute(
        f"SELECT run_id FROM runs WHERE finished_at < ? AND status IN ({marks}) ORDER BY finished_at LIMIT ?",
        (cutoff, *FINISHED_RUN, limit),
    ).fetchall()
    return [str(r[0]) for r in rows]


def count_prunable(db: sqlite3.Connection, cutoff: float) -> int:
    marks = ",".join("?" * len(FINISHED_RUN))
    row = db.execute(f"SELECT count(*) FROM runs WHERE finished_at < ? AND status IN ({marks})",
                     (cutoff, *FINISHED_RUN)).fetchone()
    return int(row[0])


def delete_runs(db: sqlite3.Connection, run_ids: list[str]) -> None:
    """Delete every row of these runs (the caller holds a transaction). Entity state (``state``)
    belongs to agents and keys, not to runs, and stays."""
    marks = ",".join("?" * len(run_ids))
    for table in (*RUN_TABLES, "runs"):
        db.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)


def prune_batch(db: sqlite3.Connection, cutoff: float, limit: int = PRUNE_BATCH) -> int:
    """One transaction deleting up to ``limit`` runs that finished before ``cutoff``; how many it deleted."""
    db.execute("BEGIN IMMEDIATE")
    try:
        ids = prunable(db, cutoff, limit)
        if ids:
            delete_runs(db, ids)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return len(ids)


class Upkeep(threading.Thread):
    """Checkpoints and pruning for one journal file, on a thread with its own connection.

    Passive checkpoints never block a writer, but under continuous writes they never catch up
    with the end of the WAL either, so SQLite cannot start the WAL over and it grows without
    bound (602 MB after 10,000 runs in one process was seen). Past a quarter of ``wal_limit`` a
    restarting checkpoint follows the passive one: it waits at most ``BUSY_MS`` for the write
    lock and holds it while it copies what the passive one left, so writers pause briefly, and
    the next commit writes the WAL from its start again (over the same file: cheaper than
    truncating it and growing it anew)."""

    INTERVAL = 0.5  # seconds between checkpoints when nothing wakes the thread
    BUSY_MS = 200
    PAUSE = 0.05  # seconds between prune batches, for the writers

    def __init__(self, path: str, *, wal_limit: int = WAL_LIMIT, retention: float | None = None) -> None:
        super().__init__(name="roost-checkpoint", daemon=True)
        self.path = path
        self.wal_limit = wal_limit
        self.retention = retention
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.pruned = 0  # runs this thread deleted (tests, logs)
        self.rounds = 0  # checkpoint (and prune) rounds done
        self._indexed = False
        self.start()

    def wal_size(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        db.execute(f"PRAGMA busy_timeout={self.BUSY_MS}")
        next_prune = time.monotonic() if self.retention is not None else None
        try:
            while not self._stopping.is_set():
                self._checkpoint(db)
                wait = self.INTERVAL
                if next_prune is not None and time.monotonic() >= next_prune:
                    more = self._prune(db)
                    next_prune = None if more is None else time.monotonic() + (self.PAUSE if more else PRUNE_EVERY)
                    wait = min(wait, self.PAUSE) if more else wait
                self.rounds += 1
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if self.wal_size() > self.wal_limit // 4:
                # Most frames were copied above without holding writers up; this copies the rest
                # with writers paused, and lets the next commit start the WAL over.
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.OperationalError:
            pass  # busy: the next round catches up

    def _prune(self, db: sqlite3.Connection) -> bool | None:
        """One batch: True if there may be more to prune, False if not, None to stop pruning."""
        assert self.retention is not None
        try:
            if not self._indexed:
                ensure_prune_index(db)
                self._indexed = True
            n = prune_batch(db, time.time() - self.retention)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return True  # another writer held on: the next round tries again
            _log.warning("pruning finished runs of %s stopped: %s", self.path, exc)
            return None
        self.pruned += n
        if n:
            _log.debug("pruned %d finished runs of %s", n, self.path)
        return n == PRUNE_BATCH

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.join()
