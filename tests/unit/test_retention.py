"""Retention: the setting, pruning finished runs (by hand, and by a live embedded runtime), and
what ``roost runs prune`` says on Restate and Temporal."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from roost import App, agent
from roost._config import load_retention, load_settings, parse_duration
from roost.errors import ConfigError
from roost.runtime.local import LocalRuntime
from roost.runtime.local._upkeep import RUN_TABLES
from tests.cli_support import invoke

DAY = 86400.0
TABLES = (*RUN_TABLES, "runs")


class N(BaseModel):
    n: int


def inc(x: N) -> N:
    if x.n < 0:
        raise ValueError("negative")
    return N(n=x.n + 1)


def build(path: Path, **options: object) -> App:
    a = agent("a").contracts(input=N, output=N).engine(inc)
    b = agent("b").contracts(input=N, output=N).engine(inc).reacts_to(a)
    gate = agent("gate").contracts(input=N, output=N).engine(inc).reacts_to(b).needs_approval()
    return App([a, b, gate], name="keep", journal=path, **options)  # type: ignore[arg-type]


def rows(path: Path, run_id: str) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT count(*) FROM {t} WHERE run_id=?", (run_id,)).fetchone()[0] for t in TABLES}
    finally:
        db.close()


def run_ids(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT run_id FROM runs")}
    finally:
        db.close()


async def journal_with_old_runs(path: Path) -> None:
    """old-1..3 (completed: approved, rejected, approved), old-failed, old-waiting (unfinished, waits on
    its approval), all aged 10 days; new (completed now)."""
    app = build(path, retention="forever")
    for run_id, approve in (("old-1", True), ("old-2", False), ("old-3", True), ("new", True)):
        handle = await app.start(N(n=1), run_id)
        assert await handle.approval() == "gate"
        await app.aresolve(run_id, "gate", approve)
        await handle.result(raise_on_failure=False)
    failed = await app.start(N(n=-1), "old-failed")
    assert (await failed.result(raise_on_failure=False)).status == "failed"
    waiting = await app.start(N(n=1), "old-waiting")
    assert await waiting.approval() == "gate"
    await app.aclose()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE runs SET created_at=created_at-?, finished_at=finished_at-? WHERE run_id LIKE 'old-%'",
                    (10 * DAY, 10 * DAY))
    db.close()
    for run_id in ("old-1", "old-waiting", "new"):
        assert all(rows(path, run_id)[t] > 0 for t in ("events", "messages", "journal", "runs"))
    assert rows(path, "old-1")["promises"] == 1


OLD_FINISHED = {"old-1", "old-2", "old-3", "old-failed"}


# -- the setting ----------------------------------------------------------------------------


def test_retention_setting_sources_and_errors(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).retention == 7 * DAY
    (tmp_path / "pyproject.toml").write_text('[tool.roost]\nretention = "36h"\n[tool.roost.env.ci]\nretention = "1h"\n')
    assert load_settings(tmp_path, env={}).retention == 36 * 3600
    assert load_retention(tmp_path, env={"ROOST_ENV": "ci"}) == 3600
    assert load_retention(tmp_path, env={"ROOST_RETENTION": "forever"}) is None
    assert load_retention(tmp_path, env={"ROOST_RETENTION": "90"}) == 90
    with pytest.raises(ConfigError, match="ROOST_RETENTION must be a duration such as 90s, 30m, 12h or 7d"):
        load_retention(tmp_path, env={"ROOST_RETENTION": "7 weeks"})
    (tmp_path / "pyproject.toml").write_text("[tool.roost]\nretention = 0\n")
    with pytest.raises(ConfigError, match="retention setting of .*pyproject.toml must be longer than 0.*forever"):
        load_settings(tmp_path, env={})
    for bad in ("-1d", "nan", float("inf"), True, "7x", ""):
        with pytest.raises(ConfigError, match="must be"):
            App([agent("a").contracts(input=N, output=N).engine(inc)], retention=bad)  # type: ignore[arg-type]
    assert parse_duration(timedelta(minutes=2), "x") == 120
    assert LocalRuntime(tmp_path / "j.db", retention="2d").retention == 2 * DAY
    assert LocalRuntime(tmp_path / "j.db", retention="forever").retention is None


# -- pruning on the embedded runtime ----------------------------------------------------------


async def test_prune_deletes_every_row_of_old_finished_runs_only(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await journal_with_old_runs(path)
    keep_waiting, keep_new = rows(path, "old-waiting"), rows(path, "new")
    async with LocalRuntime(path, auto_prune=False) as rt:
        assert (await rt.prune(7 * DAY, dry_run=True)).pruned == 4
        assert run_ids(path) == OLD_FINISHED | {"old-waiting", "new"}
        assert (await rt.prune(7 * DAY)).pruned == 4
        assert (await rt.prune(7 * DAY)).pruned == 0
    assert run_ids(path) == {"old-waiting", "new"}
    for run_id in OLD_FINISHED:
        assert rows(path, run_id) == dict.fromkeys(TABLES, 0)
    assert rows(path, "old-waiting") == keep_waiting and rows(path, "new") == keep_new
    # the unfinished run is intact: approving it finishes it
    app = build(path, retention="forever")
    await app.aresolve("old-waiting", "gate", True)
    assert (await app.aresume("old-waiting", timeout=30))["gate"] == N(n=4)
    await app.aclose()


async def test_a_live_runtime_prunes_runs_past_the_retention_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await journal_with_old_runs(path)
    app = build(path, retention="7d")
    try:
        await app.runtime()  # opening starts the upkeep thread, which prunes at once, in batches
        for _ in range(400):
            if run_ids(path) == {"old-waiting", "new"}:
                break
            await asyncio.sleep(0.05)
        assert run_ids(path) == {"old-waiting", "new"}
    finally:
        await app.aclose()


async def test_a_longer_retention_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await journal_with_old_runs(path)
    app = build(path, retention="30d")
    rt = await app.runtime()
    assert isinstance(rt, LocalRuntime) and rt.retention == 30 * DAY
    upkeep = rt.journal._upkeep
    assert upkeep is not None
    for _ in range(400):
        if upkeep.rounds:
            break
        await asyncio.sleep(0.05)
    assert upkeep.rounds and upkeep.pruned == 0  # it has pruned once: nothing that old
    await app.aclose()
    assert run_ids(path) == OLD_FINISHED | {"old-waiting", "new"}


# -- roost runs prune --------------------------------------------------------------------------


async def test_cli_prune_dry_run_then_prune(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await journal_with_old_runs(path)
    env = {"ROOST_RETENTION": None, "ROOST_RUNTIME": None, "ROOST_MODE": None, "COLUMNS": "200"}
    dry = await asyncio.to_thread(invoke, "runs", "prune", "--older-than", "7d", "--dry-run", "--journal", path, env=env)
    assert dry.exit_code == 0, dry.output
    assert "4 finished runs" in dry.output and "more than 7d ago" in dry.output and "nothing deleted" in dry.output
    assert run_ids(path) == OLD_FINISHED | {"old-waiting", "new"}
    bad = await asyncio.to_thread(invoke, "runs", "prune", "--older-than", "7w", "--journal", path, env=env)
    assert bad.exit_code == 2 and "must be a duration such as 90s, 30m, 12h or 7d" in bad.output
    done = await asyncio.to_thread(invoke, "runs", "prune", "--older-than", "168h", "--journal", path, env=env)
    assert done.exit_code == 0, done.output
    assert "pruned 4 finished runs" in done.output and "more than 7d ago" in done.output
    assert run_ids(path) == {"old-waiting", "new"}
    again = await asyncio.to_thread(invoke, "runs", "prune", "--journal", path, env=env)  # default: the setting, 7d
    assert again.exit_code == 0 and "pruned 0 finished runs" in again.output


def test_cli_prune_with_retention_forever_needs_an_age(tmp_path: Path) -> None:
    result = invoke("runs", "prune", "--journal", tmp_path / "j.db", env={"ROOST_RETENTION": "forever"})
    assert result.exit_code == 2 and "pass --older-than" in result.output


@pytest.mark.parametrize(("runtime", "says"), [
    ("restate", ["Restate deletes finished runs by itself", "workflow retention", "now 3d"]),
    ("temporal", ["Temporal deletes finished runs by itself", "temporal operator namespace update",
                  "--namespace default --retention 259200s"]),
])
def test_cli_prune_on_a_prod_runtime_says_how_retention_works_there(runtime: str, says: list[str]) -> None:
    pytest.importorskip("restate" if runtime == "restate" else "temporalio")
    result = invoke("runs", "prune", "--runtime", runtime,
                    env={"ROOST_RETENTION": "3d", "COLUMNS": "400", "ROOST_TEMPORAL_NAMESPACE": None})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for part in says:
        assert part in text


# -- Restate and Temporal ----------------------------------------------------------------------


def test_restate_run_workflow_is_registered_with_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("restate")
    from roost.runtime.restate._retention import FOREVER
    from roost.runtime.restate._services import services

    app = build(Path("unused.db"))
    monkeypatch.delenv("ROOST_RETENTION", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no [tool.roost] retention here
    assert services(app.compiled)[0].handlers["run"].workflow_retention == timedelta(days=7)
    monkeypatch.setenv("ROOST_RETENTION", "36h")
    assert services(app.compiled)[0].handlers["run"].workflow_retention == timedelta(hours=36)
    monkeypatch.setenv("ROOST_RETENTION", "forever")
    assert services(app.compiled)[0].handlers["run"].workflow_retention == FOREVER


def test_temporal_dev_server_sets_the_retention_of_its_namespaces(tmp_path: Path) -> None:
    from roost.runtime.temporal._server import TemporalDevServer, TemporalServerError

    calls = tmp_path / "calls"
    fake = tmp_path / "temporal"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$7" = "broken" ] && {{ echo "no such namespace" >&2; exit 1; }}\n'
                    "exit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    server = TemporalDevServer(tmp_path, port=17233, namespaces=("other",), binary=fake)
    server.set_retention(7 * DAY)
    server.set_retention(None)
    assert calls.read_text().splitlines() == [
        "operator namespace update --address 127.0.0.1:17233 --namespace default --retention 604800s",
        "operator namespace update --address 127.0.0.1:17233 --namespace other --retention 604800s",
        "operator namespace update --address 127.0.0.1:17233 --namespace default --retention 876000h",
        "operator namespace update --address 127.0.0.1:17233 --namespace other --retention 876000h",
    ]
    broken = TemporalDevServer(tmp_path, port=17233, namespaces=("broken",), binary=fake)
    with pytest.raises(TemporalServerError, match="namespace 'broken' failed: no such namespace"):
        broken.set_retention(DAY)
