"""The SQLite journal of the embedded runtime: schema, version check and every query.

All calls run on the event loop's thread; each public write is one transaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ..._engine import Activation
from ...errors import ConfigError, JournalError, JournalVersionError
from .._branches import detached
from ._busy import BUSY_MS, LOCK_WAIT, busy_error, delays, is_busy, retry_sync
from ._lease import SCHEMA as LEASE_SCHEMA
from ._lease import TABLES as LEASE_TABLES
from ._upkeep import PRUNE_INDEX, WAL_LIMIT, Upkeep

SCHEMA_VERSION = 2
Durability = Literal["process", "machine", "memory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
  run_id TEXT PRIMARY KEY, app TEXT NOT NULL, fingerprint TEXT NOT NULL, app_ref TEXT,
  input TEXT NOT NULL, input_hash TEXT NOT NULL, status TEXT NOT NULL,
  pending INTEGER NOT NULL, activations INTEGER NOT NULL DEFAULT 0, owner TEXT, error TEXT,
  created_at REAL NOT NULL, finished_at REAL);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
{prune_index};
CREATE TABLE IF NOT EXISTS messages(
  run_id TEXT NOT NULL, id TEXT NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT,
  cause TEXT, meta TEXT, deliver_at REAL, status TEXT NOT NULL, output TEXT, error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL, UNIQUE(run_id, id));
CREATE INDEX IF NOT EXISTS messages_run ON messages(run_id, status);
CREATE TABLE IF NOT EXISTS events(
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY(run_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal(
  run_id TEXT NOT NULL, activation TEXT NOT NULL, position TEXT NOT NULL, kind TEXT NOT NULL,
  name TEXT NOT NULL, status TEXT NOT NULL, value TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  started_at REAL, finished_at REAL, PRIMARY KEY(run_id, activation, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state(
  agent TEXT NOT NULL, key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY(agent, key, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cancels(
  run_id TEXT PRIMARY KEY, reason TEXT, requested_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS promises(
  run_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, resolved_at REAL NOT NULL,
  PRIMARY KEY(run_id, name)) WITHOUT ROWID;
""".replace("{prune_index}", PRUNE_INDEX) + LEASE_SCHEMA

_SYNC = {"process": "NORMAL", "machine": "FULL", "memory": "OFF"}


class Journal:
    """``retention``: seconds after which finished runs are pruned in the background (None: never).
    ``wal_limit``: bytes the WAL stays within (lower in tests)."""

    def __init__(self, path: str | os.PathLike[str], durability: Durability = "process", *,
                 retention: float | None = None, wal_limit: int = WAL_LIMIT) -> None:
        if durability not in _SYNC:
            raise ConfigError(f"durability must be one of {', '.join(_SYNC)}, got {durability!r}")
        self.durability = durability
        self.path = ":memory:" if durability == "memory" else str(path)
        self._upkeep: Upkeep | None = None
        self.wal_limit = wal_limit
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                      timeout=BUSY_MS / 1000)
            # Several processes may open (and create) the journal at once: wait out their locks.
            retry_sync(self.path, self._setup)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path} cannot be used as a roost journal: {exc}") from exc
        if self.path != ":memory:":
            # SQLite's automatic checkpoint would run inside whichever commit crosses the limit,
            # stalling the event loop for milliseconds; a thread with its own connection does it.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            # When a checkpoint lets SQLite start the WAL over, it cuts the file down to this.
            self.db.execute(f"PRAGMA journal_size_limit={wal_limit // 4}")
            self._upkeep = Upkeep(self.path, wal_limit=wal_limit, retention=retention)

    def _setup(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={_SYNC[self.durability]}")
        if not self._tables():
            with self.tx():  # the check again under the write lock: one process creates the schema
                if not self._tables():
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._check_version()
        if not set(LEASE_TABLES) <= self._tables():  # a journal from before leases: they are added
            with self.tx():
                for stmt in LEASE_SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_version(self) -> None:
        tables = self._tables()
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


    def close(self) -> None:
        if self._upkeep is not None:
            self._upkeep.stop()
        self.db.close()

    def committed(self) -> None:
        """After each commit: keep the WAL within ``wal_limit``. Past a quarter of it the upkeep
        thread checkpoints at once; past half (that thread is starved or held up) this connection
        checkpoints itself, pausing the event loop for the copy, and the next commit starts the
        WAL over: it never grows further than half the limit plus one commit (unless a reader in
        another process holds an old snapshot for that long)."""
        if self._upkeep is None:
            return
        size = self._upkeep.wal_size()
        if size <= self.wal_limit // 4:
            return
        self._upkeep.wake()
        if size > self.wal_limit // 2:
            self._restart_wal()

    def _restart_wal(self) -> None:
        """A restarting checkpoint on this connection. SQLite refuses one at once while another
        connection checkpoints (it waits for no one on that lock), and meanwhile this connection
        would go on writing: so try again for up to ``BUSY_MS``."""
        self.db.execute(f"PRAGMA busy_timeout={Upkeep.BUSY_MS}")  # not the 10 s writers wait
        deadline = time.monotonic() + Upkeep.BUSY_MS / 1000
        try:
            while self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.001)
        except sqlite3.OperationalError:
            pass  # the upkeep thread keeps trying
        finally:
            self.db.execute("PRAGMA busy_timeout=10000")

    def run_ops(self, ops: list[Op]) -> list[Any]:
        """Run ``ops`` in one transaction and return their results. If one raises (anything but
        a database that is busy or full, which fails them all), the transaction is rolled back
        and each op runs again in a transaction of its own, so one bad op fails alone."""
        try:
            with self.tx() as db:
                return [op(db) for op in ops]
        except sqlite3.OperationalError:
            raise
        except Exception:
            if len(ops) == 1:
                raise
        results: list[Any] = []
        for op in ops:
            try:
                with self.tx() as db:
                    results.append(op(db))
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                results.append(exc)
        return results

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.committed()

    # -- runs -------------------------------------------------------------------------------

    def run_row(self, run_id: str) -> sqlite3.Row | None:
        cur = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        cur.row_factory = sqlite3.Row
        row: sqlite3.Row | None = cur.fetchone()
        return row

    def unfinished(self) -> list[tuple[str, str, str | None]]:
        rows = self.db.execute("SELECT run_id, app, owner FROM runs WHERE status='running'").fetchall()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def cancel_requests(self, run_ids: list[str]) -> dict[str, str | None]:
        """run id -> reason, for those of ``run_ids`` that someone asked to cancel."""
        out: dict[str, str | None] = {}
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i:i + 500]
            rows = self.db.execute(f"SELECT run_id, reason FROM cancels WHERE run_id IN ({','.join('?' * len(chunk))})",
                                   chunk)
            out.update({str(r[0]): r[1] for r in rows})
        return out

    @staticmethod
    def request_cancel(db: sqlite3.Connection, run_id: str, reason: str | None) -> None:
        db.execute("INSERT OR IGNORE INTO cancels VALUES(?,?,?)", (run_id, reason, time.time()))

    @staticmethod
    def cancel_unowned(db: sqlite3.Connection, run_id: str, seq: int, event: dict[str, Any], owner: str | None) -> bool:
        """End a run no process runs (and none here has its code for) as cancelled: nothing of it
        is in flight, so its unfinished activations just end cancelled."""
        now = time.time()
        if db.execute("UPDATE runs SET status='cancelled', pending=0, finished_at=? "
                      "WHERE run_id=? AND status='running' AND owner IS ?", (now, run_id, owner)).rowcount != 1:
            return False
        db.execute("INSERT OR IGNORE INTO events VALUES(?,?,?)", (run_id, seq, json.dumps(event)))
        db.execute("UPDATE messages SET status='cancelled', finished_at=? WHERE run_id=? "
                   "AND status NOT IN ('completed','failed','rejected','absorbed','cancelled')", (now, run_id))
        return True

    def last_seq(self, run_id: str) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM events WHERE run_id=?", (run_id,)).fetchone()
        return int(row[0] or 0)

    def list_runs(self, limit: int) -> list[sqlite3.Row]:
        cur = self.db.execute(
            "SELECT run_id, app, status, created_at, finished_at, fingerprint FROM runs ORDER BY created_at DESC "
            "LIMIT ?", (limit,)
        )
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's engine events, in the order they were handled."""
        rows = self.db.execute("SELECT data FROM events WHERE run_id=? ORDER BY seq", (run_id,))
        return [json.loads(r[0]) for r in rows]

    # -- writes: each is an op for the group commit (see Committer) ---------------------------

    @staticmethod
    def insert_run(db: sqlite3.Connection, *, run_id: str, app: str, fingerprint: str, app_ref: str | None,
                   input_json: str, input_hash: str, owner: str) -> bool:
        cur = db.execute(
            "INSERT OR IGNORE INTO runs(run_id, app, fingerprint, app_ref, input, input_hash, status, pending, "
            "owner, created_at) VALUES(?,?,?,?,?,?,'running',0,?,?)",
            (run_id, app, fingerprint, app_ref, input_json, input_hash, owner, time.time()),
        )
        return cur.rowcount == 1

    @staticmethod
    def append_event(db: sqlite3.Connection, run_id: str, seq: int, event: dict[str, Any]) -> None:
        db.execute("INSERT INTO events VALUES(?,?,?)", (run_id, seq, json.dumps(event)))

    @staticmethod
    def insert_activation(db: sqlite3.Connection, run_id: str, spec: Activation) -> None:
        meta = {"batch": [list(b) for b in spec.batch]}
        if spec.reply_to:
            meta["reply_to"] = spec.reply_to  # type: ignore[assignment]
        db.execute(
            "INSERT OR IGNORE INTO messages(run_id, id, target, kind, payload, cause, meta, deliver_at, status) "
            "VALUES(?,?,?,?,?,?,?,?,'pending')",
            (run_id, spec.id, spec.agent, spec.kind, json.dumps(list(spec.args)), spec.cause, json.dumps(meta),
             spec.not_before),
        )

    @staticmethod
    def mark_started(db: sqlite3.Connection, run_id: str, activation: str, started_at: float) -> None:
        """An activation began running (its row stays 'pending' until its outcome): ``get`` shows it running."""
        db.execute("UPDATE messages SET started_at=? WHERE run_id=? AND id=? AND status='pending'",
                   (started_at, run_id, activation))

    @staticmethod
    def update_activation(db: sqlite3.Connection, run_id: str, activation: str, status: str, *,
                          output: str | None = None, error: str | None = None, attempts: int | None = None,
                          started_at: float | None = None) -> None:
        if attempts is None:
            db.execute("UPDATE messages SET status=? WHERE run_id=? AND id=?", (status, run_id, activation))
            return
        db.execute(
            "UPDATE messages SET status=?, output=?, error=?, attempts=?, started_at=?, finished_at=? "
            "WHERE run_id=? AND id=?",
            (status, output, error, attempts, started_at, time.time(), run_id, activation),
        )

    @staticmethod
    def update_run(db: sqlite3.Connection, run_id: str, *, pending: int, activations: int, status: str,
                   error: str | None) -> None:
        if status == "running":
            db.execute("UPDATE runs SET pending=?, activations=?, error=coalesce(error, ?) WHERE run_id=?",
                       (pending, activations, error, run_id))
        else:
            db.execute("UPDATE runs SET pending=?, activations=?, status=?, error=?, finished_at=?, owner=NULL "
                       "WHERE run_id=?", (pending, activations, status, error, time.time(), run_id))

    @staticmethod
    def write_state(db: sqlite3.Connection, agent: str, key: str, fields: dict[str, str | None]) -> None:
        for name, value in fields.items():
            if value is None:
                db.execute("DELETE FROM state WHERE agent=? AND key=? AND field=?", (agent, key, name))
            else:
                db.execute("INSERT OR REPLACE INTO state VALUES(?,?,?,?)", (agent, key, name, value))

    @staticmethod
    def record(db: sqlite3.Connection, row: tuple[Any, ...]) -> None:
        """row: run_id, activation, position, kind, name, status, value, attempts, started, finished."""
        db.execute("INSERT OR REPLACE INTO journal VALUES(?,?,?,?,?,?,?,?,?,?)", row)

    @staticmethod
    def finish_entry(db: sqlite3.Connection, run_id: str, activation: str, position: str, value: str) -> None:
        """Mark a waiting entry (promise, call) done, keeping when the wait started."""
        db.execute(
            "UPDATE journal SET status='done', value=?, finished_at=? WHERE run_id=? AND activation=? AND position=?",
            (value, time.time(), run_id, activation, position),
        )

    # -- reads ----------------------------------------------------------------------------------

    def entries(self, run_id: str, activation: str) -> dict[str, tuple[str, str, str, str | None, int]]:
        rows = self.db.execute(
            "SELECT position, kind, name, status, value, attempts FROM journal WHERE run_id=? AND activation=?",
            (run_id, activation),
        )
        return {str(r[0]): (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def state(self, agent: str, key: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT field, value FROM state WHERE agent=? AND key=?", (agent, key)).fetchall())

    def promises(self, run_id: str) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in self.db.execute("SELECT name, value FROM promises WHERE run_id=?",
                                                                  (run_id,))}

    def resolve(self, run_id: str, name: str, value_json: str) -> bool:
        cur = self.db.execute("INSERT OR IGNORE INTO promises VALUES(?,?,?,?)", (run_id, name, value_json, time.time()))
        return cur.rowcount == 1

    def waiting_on(self, run_id: str, *, approvals: bool = False) -> list[str]:
        """Names of the promises the run waits on (``approvals``: only its approvals)."""
        only = " AND position='approval'" if approvals else ""
        return [
            r[0] for r in self.db.execute(
                "SELECT name FROM journal WHERE run_id=? AND kind='promise' AND status='waiting'" + only
                + " ORDER BY started_at", (run_id,),
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
            "FROM journal WHERE run_id=? ORDER BY activation, started_at, position", (run_id,)
        )
        cur.row_factory = sqlite3.Row
        return cur.fetchall()


Op = Callable[[sqlite3.Connection], Any]


class Committer:
    """Group commit: every write asked for in one turn of the event loop goes into one transaction.

    A caller awaits its op's result, which is there only once the transaction has committed, so
    nothing acts on a write that a crash could still lose. The flush is a plain callback at the
    end of the turn (no task). A commit that fails is retried with back-off by a task that holds
    back later writes meanwhile (their order is kept): on a database locked by another process for
    up to LOCK_WAIT seconds in all, on other errors (a full disk) ``len(RETRIES)`` times; then every
    op of it fails with JournalBusyError or JournalError (the caller fails the run it belongs to)."""

    RETRIES = (0.05, 0.2, 0.5, 1.0, 2.0)
    LOCK_WAIT = LOCK_WAIT

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._ops: list[tuple[Op, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._retrying: asyncio.Task[None] | None = None

    def submit(self, op: Op) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.append((op, fut))
        if not self._scheduled and self._retrying is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._retrying is not None or not self._ops:
            return
        batch, self._ops = self._ops, []
        try:
            results = self.journal.run_ops([op for op, _ in batch])
        except (sqlite3.OperationalError, JournalError) as exc:
            self._retrying = asyncio.get_running_loop().create_task(self._retry(batch, exc), context=detached())
            return
        except Exception as exc:  # the batch's one op failed on its own
            results = [exc] * len(batch)
        _settle(batch, results)

    async def _retry(self, batch: list[tuple[Op, asyncio.Future[Any]]], failure: BaseException) -> None:
        start, backoff, others = time.monotonic(), delays(), 0
        try:
            while True:
                if is_busy(failure):  # another process holds the write lock: wait it out, bounded
                    waited = time.monotonic() - start
                    if waited >= self.LOCK_WAIT:
                        _settle(batch, [busy_error(self.journal.path, waited, failure)] * len(batch))
                        return
                    delay = min(next(backoff), self.LOCK_WAIT - waited)
                else:
                    if others == len(self.RETRIES):
                        error = JournalError(f"the journal {self.journal.path} could not be written: {failure}")
                        _settle(batch, [error] * len(batch))
                        return
                    delay, others = self.RETRIES[others], others + 1
                await asyncio.sleep(delay)
                try:
                    results = self.journal.run_ops([op for op, _ in batch])
                except (sqlite3.OperationalError, JournalError) as exc:
                    failure = exc
                    continue
                except Exception as exc:
                    results = [exc] * len(batch)
                _settle(batch, results)
                return
        finally:
            self._retrying = None
            if self._ops:
                self._flush()

    async def drain(self) -> None:
        """Commit what is pending (closing), waiting out a retry."""
        while True:
            if self._retrying is not None:
                await asyncio.gather(self._retrying, return_exceptions=True)
            if not self._ops:
                return
            self._flush()


def _settle(batch: list[tuple[Op, asyncio.Future[Any]]], results: list[Any]) -> None:
    for (_, fut), result in zip(batch, results, strict=True):
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
