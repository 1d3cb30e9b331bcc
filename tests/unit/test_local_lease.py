"""Owners, leases and the bounded wait for the journal's write lock (embedded runtime).

The cross-process cases (killed owners, PID namespaces, entity state from two processes) are in
tests/crash/test_crash_local_multiprocess.py; these check the pieces in one process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import BaseModel

from roost import App, agent
from roost.errors import ConfigError, JournalBusyError
from roost.runtime.local import LocalRuntime
from roost.runtime.local import _journal as journal_module
from roost.runtime.local._journal import Committer, Journal
from roost.runtime.local._lease import Owner, alive, lease_seconds, lock_dir


class T(BaseModel):
    text: str


def echo_app(path: Path) -> App:
    return App([agent("echo").contracts(input=T, output=T).engine(lambda t: t)], journal=path)


def test_an_owner_is_alive_while_it_holds_its_lease_and_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with closing(Journal(path)) as journal:
        other = Owner(str(path), ttl=60.0)
        db = journal.db
        other.lock()
        db.execute("BEGIN IMMEDIATE")
        other.insert(db)
        db.execute("COMMIT")
        assert alive(db, str(path), other.id), "a lease that has not expired, a lock that is held"
        assert not alive(db, str(path), "0" * 32), "no such owner"
        assert not alive(db, str(path), None)
        other.close()  # its lock file goes; the row says it lives for 60 s more
        assert alive(db, str(path), other.id)
        db.execute("UPDATE owners SET expires_at=? WHERE owner=?", (time.time() - 1, other.id))
        assert not alive(db, str(path), other.id), "an expired lease"


def test_a_dead_process_is_noticed_through_its_lock_file_before_its_lease_expires(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with closing(Journal(path)) as journal:
        owner_id = "f" * 32
        db = journal.db
        db.execute("INSERT INTO owners VALUES(?,?,?,?,?)", (owner_id, 1, "h", time.time(), time.time() + 600))
        lock_dir(str(path)).mkdir(exist_ok=True)
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
        holder = subprocess.Popen([sys.executable, "-c", code, str(lock_dir(str(path)) / owner_id)],
                                  stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
            assert alive(db, str(path), owner_id)
        finally:
            holder.kill()
            holder.wait(timeout=10)
            if holder.stdout is not None:
                holder.stdout.close()
        assert not alive(db, str(path), owner_id), "its lock can be taken: the process is gone"


def test_the_lease_is_a_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lease_seconds(3) == 3.0
    monkeypatch.setenv("ROOST_LEASE_SECONDS", "2.5")
    assert lease_seconds(None) == 2.5
    for bad in (0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="lease"):
            LocalRuntime(lease_seconds=bad)
    monkeypatch.setenv("ROOST_LEASE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="'soon'"):
        lease_seconds(None)


async def test_a_lock_held_past_the_bounded_wait_is_a_typed_error_naming_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    monkeypatch.setattr(Committer, "LOCK_WAIT", 0.5)
    monkeypatch.setattr(journal_module, "BUSY_MS", 50)
    async with echo_app(path) as app:
        await app.runtime()
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(JournalBusyError, match="stayed locked by another process") as info:
                await app.arun(T(text="x"), run_id="r")
            assert info.value.path == str(path) and str(path) in str(info.value)
            other.execute("COMMIT")
        result = await app.arun(T(text="x"), run_id="r")  # the lock is gone: the same run goes on
        assert result.status == "completed"
