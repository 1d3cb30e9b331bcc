"""The SQLite journal of the embedded runtime: schema, version check and every query.

All calls run on the event loop's thread; each public write is one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ..._activation import Message
from ...errors import ConfigError, JournalError, JournalVersionError

SCHEMA_VERSION = 1
Durability = Literal["process", "machine", "memory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
  run_id TEXT PRIMARY KEY, app TEXT NOT NULL, fingerprint TEXT NOT NULL, app_ref TEXT,
  input TEXT NOT NULL, input_hash TEXT NOT NULL, status TEXT NOT NULL,
  pending INTEGER NOT NULL, activations INTEGER NOT NULL DEFAULT 0, owner TEXT, error TEXT,
  created_at REAL NOT NULL, finished_at REAL);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS messages(
  run_id TEXT NOT NULL, id TEXT NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT,
  cause TEXT, meta TEXT, deliver_at REAL, status TEXT NOT NULL, output TEXT, error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL, UNIQUE(run_id, id));
CREATE INDEX IF NOT EXISTS messages_run ON messages(run_id, status);
CREATE TABLE IF NOT EXISTS journal(
  run_id TEXT NOT NULL, activation TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
  name TEXT NOT NULL, status TEXT NOT NULL, value TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  started_at REAL, finished_at REAL, PRIMARY KEY(run_id, activation, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state(
  agent TEXT NOT NULL, key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY(agent, key, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS promises(
  run_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, resolved_at REAL NOT NULL,
  PRIMARY KEY(run_id, name)) WITHOUT ROWID;
"""

_SYNC = {"process": "NORMAL", "machine": "FULL", "memory": "OFF"}


class Journal:
    def __init__(self, path: str | os.PathLike[str], durability: Durability = "process") -> None:
        if durability not in _SYNC:
            raise ConfigError(f"durability must be one of {', '.join(_SYNC)}, got {durability!r}")
        self.durability = durability
        self.path = ":memory:" if durability == "memory" else str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={_SYNC[durability]}")
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path} cannot be used as a roost journal: {exc}") from exc
        self._checkpointer: _Checkpointer | None = None
        if self.path != ":memory:":
            # SQLite's automatic checkpoint would run inside whichever commit crosses the limit,
            # stalling the event loop for milliseconds; a thread with its own connection does it.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path)

    def _check_version(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise JournalError(
                f"{self.path} is an SQLite database but not a roost journal (tables: {', '.join(sorted(tables))}); "
                "point the journal at another file"
            )
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            found = int(row[0]) if row else None
            if found != SCHEMA_VERSION:
                raise JournalVersionError(
                    f"the journal {self.path} has schema version {found}, but this roost reads version "
                    f"{SCHEMA_VERSION}. Finish its runs with the roost version that wrote it, or move the file "
                    "away (or set ROOST_JOURNAL to a new path) to start a new journal."
                )
            return
        with self.tx():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            self.db.execute("INSERT INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------

    def run_row(self, run_id: str) -> sqlite3.Row | None:
        cur = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        cur.row_factory = sqlite3.Row
        row: sqlite3.Row | None = cur.fetchone()
        return row

    def create_run(self, *, run_id: str, app: str, fingerprint: str, app_ref: str | None, input_json: str,
                   input_hash: str, owner: str, entries: list[Message]) -> bool:
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO runs(run_id, app, fingerprint, app_ref, input, input_hash, status, pending, "
                "owner, created_at) VALUES(?,?,?,?,?,?,'running',?,?,?)",
                (run_id, app, fingerprint, app_ref, input_json, input_hash, len(entries), owner, time.time()),
            )
            if cur.rowcount == 0:
                return False
            self._insert_messages(db, entries)
        return True

    def claim(self, run_id: str, owner: str, previous: str | None) -> bool:
        cur = self.db.execute(
            "UPDATE runs SET owner=? WHERE run_id=? AND owner IS ? AND status='running'", (owner, run_id, previous)
        )
        return cur.rowcount == 1

    def release(self, owner: str) -> None:
        self.db.execute("UPDATE runs SET owner=NULL WHERE owner=? AND status='running'", (owner,))

    def unfinished(self) -> list[tuple[str, str, str | None]]:
        rows = self.db.execute("SELECT run_id, app, owner FROM runs WHERE status='running'").fetchall()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def list_runs(self, limit: int) -> list[sqlite3.Row]:
        cur = self.db.execute(
            "SELECT run_id, app, status, created_at, finished_at FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    # -- messages ---------------------------------------------------------------------------

    @staticmethod
    def _insert_messages(db: sqlite3.Connection, msgs: Iterable[Message]) -> int:
        n = 0
        for m in msgs:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages(run_id, id, target, kind, payload, cause, meta, deliver_at, status) "
                "VALUES(?,?,?,?,?,?,?,?,'pending')",
                (m.run_id, m.id, m.target, m.kind, json.dumps(m.payload), m.cause, json.dumps(m.meta), m.deliver_at),
            )
            n += cur.rowcount
        return n

    def pending_messages(self, run_id: str) -> list[Message]:
        rows = self.db.execute(
            "SELECT id, target, kind, payload, cause, meta, deliver_at FROM messages "
            "WHERE run_id=? AND status='pending' ORDER BY rowid",
            (run_id,),
        ).fetchall()
        return [Message(r[0], run_id, r[1], r[2], json.loads(r[3]), r[4], json.loads(r[5]), r[6]) for r in rows]

    def send(self, msg: Message, *, journal_row: tuple[Any, ...]) -> bool:
        """Insert a message sent from orchestration code, with its journal entry, atomically."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO journal VALUES(?,?,?,?,?,?,?,?,?,?)", journal_row)
            n = self._insert_messages(db, [msg])
            db.execute("UPDATE runs SET pending=pending+? WHERE run_id=?", (n, msg.run_id))
        return n == 1

    def complete(
        self,
        *,
        run_id: str,
        msg_id: str,
        status: str,
        output_json: str | None,
        error_json: str | None,
        attempts: int,
        started_at: float,
        new: list[Message],
        state_writes: dict[tuple[str, str], dict[str, str | None]],
        reply: tuple[str, str] | None,
        fail_run: str | None,
        cancel_others: list[str] | None,
    ) -> tuple[int, str]:
        """Commit an activation's outcome; returns (pending messages left, run status)."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "UPDATE messages SET status=?, output=?, error=?, attempts=?, started_at=?, finished_at=? "
                "WHERE run_id=? AND id=?",
                (status, output_json, error_json, attempts, started_at, now, run_id, msg_id),
            )
            added = self._insert_messages(db, new)
            for (agent, key), fields in state_writes.items():
                for name, value in fields.items():
                    if value is None:
                        db.execute("DELETE FROM state WHERE agent=? AND key=? AND field=?", (agent, key, name))
                    else:
                        db.execute("INSERT OR REPLACE INTO state VALUES(?,?,?,?)", (agent, key, name, value))
            if reply is not None:
                db.execute("INSERT OR IGNORE INTO promises VALUES(?,?,?,?)", (run_id, reply[0], reply[1], now))
            if fail_run is not None:
                db.execute("UPDATE runs SET error=coalesce(error, ?) WHERE run_id=?", (fail_run, run_id))
            if cancel_others is not None:
                # The run failed: drop what has not started; activations still running (kept) finish.
                keep = ",".join("?" * len(cancel_others))
                cur = db.execute(
                    f"UPDATE messages SET status='cancelled', finished_at=? WHERE run_id=? AND status='pending' "
                    f"AND id NOT IN ({keep})", (now, run_id, *cancel_others)
                )
                added -= cur.rowcount
            db.execute(
                "UPDATE runs SET pending=pending+?-1, activations=activations+1 WHERE run_id=?", (added, run_id)
            )
            pending, error = db.execute("SELECT pending, error FROM runs WHERE run_id=?", (run_id,)).fetchone()
            status_out = "running"
            if pending <= 0:
                status_out = "failed" if error else "completed"
                db.execute("UPDATE runs SET status=?, finished_at=?, owner=NULL WHERE run_id=?", (status_out, now, run_id))
        return pending, status_out

    # -- journal entries, state, promises ------------------------------------------------------

    def entries(self, run_id: str, activation: str) -> dict[int, tuple[str, str, str, str | None, int]]:
        rows = self.db.execute(
            "SELECT position, kind, name, status, value, attempts FROM journal WHERE run_id=? AND activation=?",
            (run_id, activation),
        )
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def record(self, row: tuple[Any, ...]) -> None:
        """row: run_id, activation, position, kind, name, status, value, attempts, started, finished."""
        self.db.execute("INSERT OR REPLACE INTO journal VALUES(?,?,?,?,?,?,?,?,?,?)", row)

    def finish_entry(self, run_id: str, activation: str, position: int, value: str) -> None:
        """Mark a waiting entry (promise, call) done, keeping when the wait started."""
        self.db.execute(
            "UPDATE journal SET status='done', value=?, finished_at=? WHERE run_id=? AND activation=? AND position=?",
            (value, time.time(), run_id, activation, position),
        )

    def state(self, agent: str, key: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT field, value FROM state WHERE agent=? AND key=?", (agent, key)).fetchall())

    def promise(self, run_id: str, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM promises WHERE run_id=? AND name=?", (run_id, name)).fetchone()
        return None if row is None else str(row[0])

    def resolve(self, run_id: str, name: str, value_json: str) -> bool:
        cur = self.db.execute("INSERT OR IGNORE INTO promises VALUES(?,?,?,?)", (run_id, name, value_json, time.time()))
        return cur.rowcount == 1

    def waiting_on(self, run_id: str) -> list[str]:
        return [
            r[0] for r in self.db.execute(
                "SELECT name FROM journal WHERE run_id=? AND kind='promise' AND status='waiting' ORDER BY started_at",
                (run_id,),
            )
        ]

    def activations(self, run_id: str) -> list[sqlite3.Row]:
        cur = self.db.execute(
            "SELECT id, target, kind, status, cause, output, error, attempts, started_at, finished_at "
            "FROM messages WHERE run_id=? ORDER BY rowid", (run_id,)
        )
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    def journal_of(self, run_id: str) -> list[sqlite3.Row]:
        cur = self.db.execute(
            "SELECT activation, position, kind, name, status, value, attempts, started_at, finished_at "
            "FROM journal WHERE run_id=? ORDER BY activation, position", (run_id,)
        )
        cur.row_factory = sqlite3.Row
        return cur.fetchall()


class _Checkpointer(threading.Thread):
    """Copies the WAL back into the database off the event loop's thread."""

    INTERVAL = 0.5  # seconds between passive checkpoints

    def __init__(self, path: str) -> None:
        super().__init__(name="roost-checkpoint", daemon=True)
        self._path = path
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
        try:
            while not self._stopping.wait(self.INTERVAL):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    pass  # busy: the next round catches up
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()
