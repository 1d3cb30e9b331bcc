"""Who runs what when several processes share one journal: owners, their leases, entity locks.

Each runtime instance that takes on runs is an *owner*: an id new for every instance (a uuid4,
so PIDs, reused over time or the same in two PID namespaces, play no part), a row in ``owners``
whose ``expires_at`` a heartbeat thread pushes ``ttl`` seconds ahead every ``ttl / 5`` seconds
(at most 2 s), and an exclusive ``flock`` on ``.<journal>-owners/<id>`` held while it lives.

An owner is alive while its lease has not expired. The lock file only speeds up noticing a dead
owner: a lock that can be taken means the process that held it is gone (the kernel dropped its
locks when it died, in whatever PID namespace it ran), which is certain; a lock that is held, or
no lock file, leaves the answer to the lease. So no check here can find two owners alive for one
run; an owner that stops renewing its lease (a stopped or stalled process) can lose its runs to
another process, and finds out at its next write to one of them: every write of a run checks
``runs.owner`` in its transaction (``check_run``), and fails with LostRun if it changed.

Runs belong to their owner through ``runs.owner``; an entity of a ``keyed_by`` agent (shared by
runs, so by processes) through a row in ``entity_owners`` held while one activation runs as it.
Every change of hands happens in a write transaction, so two processes never both take one.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

from ...errors import ConfigError
from ._busy import BUSY_MS
from ._owner import legacy_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: the lease alone decides
    fcntl = None  # type: ignore[assignment]

LEASE_SECONDS = 10.0  # default; LocalRuntime(lease_seconds=...) or ROOST_LEASE_SECONDS
FORGET_AFTER = 3600.0  # seconds after which an expired owner's row is deleted

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners(
  owner TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, started_at REAL NOT NULL,
  expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entity_owners(
  agent TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL, holder TEXT NOT NULL,
  PRIMARY KEY(agent, key)) WITHOUT ROWID;
"""
TABLES = ("owners", "entity_owners")

_LOCAL: dict[str, Owner] = {}  # owners registered by this process and not closed


class LostRun(Exception):  # noqa: N818 - a signal between the journal and the runtime, never shown alone
    """Another process took over a run (or an entity) this runtime was running: its lease had expired."""


def lease_seconds(given: float | None) -> float:
    raw: object = given if given is not None else os.environ.get("ROOST_LEASE_SECONDS") or LEASE_SECONDS
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0.5:
        raise ConfigError(f"the lease of the local runtime (lease_seconds / ROOST_LEASE_SECONDS) must be a number "
                          f"of seconds >= 0.5, got {raw!r}")
    return value


def lock_dir(path: str) -> Path:
    """``.<journal file name>-owners`` next to the journal (hidden: ``roost.db*`` names the journal's own files)."""
    journal = Path(path)
    return journal.with_name(f".{journal.name}-owners")


class Owner:
    """This runtime instance as an owner of runs: its id, its lease row, its heartbeat, its lock file."""

    def __init__(self, path: str, ttl: float) -> None:
        self.id = uuid.uuid4().hex
        self.path = path
        self.ttl = ttl
        self.registered = False
        self._fd: int | None = None
        self._heartbeat: _Heartbeat | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.kept = False
        """Its runtime closed while sync steps still ran (``_detached.py``): it lives on, keeping
        their runs, until the last of them is journaled."""

    # -- registration: lock file, then the row (an op), then the heartbeat ---------------------

    def lock(self) -> None:
        """Hold the lock file (before the row exists, so no one finds the owner without it)."""
        if fcntl is None or self.path == ":memory:":
            return
        directory = lock_dir(self.path)
        try:
            directory.mkdir(exist_ok=True)
            temp = directory / f"{self.id}.tmp"  # locked before it has the name others look for
            fd = os.open(temp, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temp, directory / self.id)
        except OSError:
            return  # no lock file: the lease alone tells whether this owner lives
        self._fd = fd

    def insert(self, db: sqlite3.Connection) -> None:
        now = time.time()
        if self.path != ":memory:":
            _sweep(db, lock_dir(self.path), now)
        db.execute("DELETE FROM owners WHERE expires_at < ?", (now - FORGET_AFTER,))
        db.execute("INSERT OR REPLACE INTO owners VALUES(?,?,?,?,?)",
                   (self.id, os.getpid(), socket.gethostname(), now, now + self.ttl))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.registered = True
        _LOCAL[self.id] = self
        if self.path != ":memory:":
            self._heartbeat = _Heartbeat(self)

    def live(self) -> bool:
        """Seen from this process: registered, and its event loop still runs (a runtime dropped
        without being closed stops renewing once its loop is closed), or ``kept``."""
        return self.registered and (self.kept or (self._loop is not None and not self._loop.is_closed()))

    def release(self, db: sqlite3.Connection, keep: frozenset[str] = frozenset()) -> None:
        """Give up everything this owner holds (an op; closing), but the runs in ``keep``: while
        it keeps some, it also keeps its entities and its lease (``_detached.py`` gives them back)."""
        if keep:
            marks = ",".join("?" * len(keep))
            db.execute(f"UPDATE runs SET owner=NULL WHERE owner=? AND status='running' AND run_id NOT IN ({marks})",
                       (self.id, *sorted(keep)))
            return
        db.execute("UPDATE runs SET owner=NULL WHERE owner=? AND status='running'", (self.id,))
        db.execute("DELETE FROM entity_owners WHERE owner=?", (self.id,))
        db.execute("DELETE FROM owners WHERE owner=?", (self.id,))

    def close(self) -> None:
        _LOCAL.pop(self.id, None)
        self.registered = False
        self.kept = False
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._fd is not None:
            with suppress(OSError):
                os.unlink(lock_dir(self.path) / self.id)
            os.close(self._fd)
            self._fd = None


class _Heartbeat(threading.Thread):
    """Renews the owner's lease from a thread of its own, on a connection of its own: a busy event
    loop (a long sync step, a slow commit) does not let the lease lapse."""

    def __init__(self, owner: Owner) -> None:
        super().__init__(name="roost-lease", daemon=True)
        self._owner = owner
        self._interval = min(2.0, owner.ttl / 5)
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        owner = self._owner
        db = sqlite3.connect(owner.path, isolation_level=None, timeout=BUSY_MS / 1000)
        try:
            while not self._stopping.wait(self._interval):
                if not owner.live():
                    return  # dropped without close: the lease runs out and others take over
                try:
                    renewed = db.execute("UPDATE owners SET expires_at=? WHERE owner=?",
                                         (time.time() + owner.ttl, owner.id)).rowcount
                    if not renewed:  # forgotten after a long stall: back, to renew it
                        owner.insert(db)
                except sqlite3.Error:
                    pass  # busy: the next beat tries again (the lease outlasts a few misses)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        if self is not threading.current_thread():
            self.join()


def _sweep(db: sqlite3.Connection, directory: Path, now: float) -> None:
    """Remove the lock files of owners that died and whose leases have expired too (best effort).
    Not sooner: without its file, a dead owner counts as alive until its lease expires."""
    expired = {r[0] for r in db.execute("SELECT owner FROM owners WHERE expires_at < ?", (now,))}
    known = {r[0] for r in db.execute("SELECT owner FROM owners")}
    with suppress(OSError):
        for entry in directory.iterdir():
            name = entry.name
            if name.endswith(".tmp") or (name in known and name not in expired):
                continue
            if _lock_free(entry):
                with suppress(OSError):
                    os.unlink(entry)


def _lock_free(file: Path) -> bool:
    """Whether ``file``'s lock can be taken, so the owner that held it has died."""
    if fcntl is None:
        return False
    try:
        fd = os.open(file, os.O_RDWR)
    except OSError:
        return False  # no lock file: the lease decides
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: its process lives, the lease decides whether it still runs anything
        return True
    finally:
        os.close(fd)


def alive(db: sqlite3.Connection, path: str, owner: str | None) -> bool:
    """Whether ``owner`` may still be running what it holds."""
    if not owner:
        return False
    local = _LOCAL.get(owner)
    if local is not None:
        return local.live()
    if ":" in owner:  # pid:starttime:nonce, written by a roost from before leases
        return legacy_alive(owner)
    if path != ":memory:" and _lock_free(lock_dir(path) / owner):
        return False
    row = db.execute("SELECT expires_at FROM owners WHERE owner=?", (owner,)).fetchone()
    return row is not None and float(row[0]) > time.time()


def describe(db: sqlite3.Connection, owner: str | None) -> str:
    """Who ``owner`` is, for people: 'pid P', and 'on HOST' when that is another host (a container)."""
    row = db.execute("SELECT pid, host FROM owners WHERE owner=?", (owner,)).fetchone() if owner else None
    if row is not None:
        return f"pid {row[0]}" + ("" if row[1] == socket.gethostname() else f" on {row[1]}")
    return f"pid {owner.split(':')[0]}" if owner and ":" in owner else "another process"


# -- runs ----------------------------------------------------------------------------------------


def claim_run(db: sqlite3.Connection, path: str, run_id: str, owner: str) -> bool:
    """Take ``run_id`` over if it is unfinished and its owner is gone (an op)."""
    row = db.execute("SELECT owner, status FROM runs WHERE run_id=?", (run_id,)).fetchone()
    if row is None or row[1] != "running":
        return False
    if row[0] != owner and alive(db, path, row[0]):
        return False
    db.execute("UPDATE runs SET owner=? WHERE run_id=?", (owner, run_id))
    return True


def check_run(db: sqlite3.Connection, run_id: str, owner: str, finished_here: bool = False) -> None:
    """Raise LostRun unless ``owner`` still runs ``run_id`` (inside the transaction of a write to it).
    ``finished_here``: the caller's runtime finished the run, and may journal its last steps."""
    row = db.execute("SELECT owner, status FROM runs WHERE run_id=?", (run_id,)).fetchone()
    if row is not None and (row[0] != owner if row[1] == "running" else not finished_here):
        raise LostRun(f"another process took run {run_id!r} over: this one had not renewed its lease in time")


# -- entities of keyed_by agents -------------------------------------------------------------------


def take_entity(db: sqlite3.Connection, path: str, agent: str, key: str, owner: str, holder: str) -> bool:
    """Hold the entity (agent, key) for the activation ``holder``, unless a live owner holds it (an op)."""
    row = db.execute("SELECT owner FROM entity_owners WHERE agent=? AND key=?", (agent, key)).fetchone()
    # This owner's own row is a leftover: within a runtime, a lock in memory lets one activation in.
    if row is not None and row[0] != owner and alive(db, path, row[0]):
        return False
    db.execute("INSERT OR REPLACE INTO entity_owners VALUES(?,?,?,?)", (agent, key, owner, holder))
    return True


def check_entity(db: sqlite3.Connection, agent: str, key: str, owner: str, holder: str) -> None:
    row = db.execute("SELECT owner, holder FROM entity_owners WHERE agent=? AND key=?", (agent, key)).fetchone()
    if row is None or tuple(row) != (owner, holder):
        raise LostRun(f"another process took the entity {key!r} of agent {agent!r} over: this one had not "
                      "renewed its lease in time")


def drop_entity(db: sqlite3.Connection, agent: str, key: str, owner: str, holder: str) -> None:
    db.execute("DELETE FROM entity_owners WHERE agent=? AND key=? AND owner=? AND holder=?",
               (agent, key, owner, holder))
