"""The JSON API of ``roost ui`` on the embedded journal, through Starlette's TestClient (no
browser, no port): listing by status, a run's record and graph, and what a resolution refuses.
The browser tests are in tests/integration/test_ui.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from roost.result import ActivationRecord, RunRecord  # noqa: E402
from roost.ui import RunSource, create_app  # noqa: E402
from roost.ui._data import graph_json  # noqa: E402
from tests.cli_support import write_app  # noqa: E402
from tests.ui_support import leave_waiting  # noqa: E402

WAIT = 30.0


def _client(journal: Path) -> TestClient:
    return TestClient(create_app(RunSource("local", journal)), base_url="http://127.0.0.1")


def test_api_lists_shows_and_resolves(tmp_path: Path) -> None:
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(leave_waiting(app_file, journal, "r-a"))
    asyncio.run(leave_waiting(app_file, journal, "r-b", "bats"))

    with _client(journal) as client:
        runs = client.get("/api/runs").json()["runs"]
        assert {r["run_id"]: (r["app"], r["status"]) for r in runs} == {
            "r-a": ("pipeline", "waiting"), "r-b": ("pipeline", "waiting")}
        assert all(r["age"] >= 0 for r in runs)
        assert client.get("/api/runs", params={"status": "completed"}).json()["runs"] == []

        run = client.get("/api/runs/r-a").json()
        assert run["status"] == "waiting" and run["waiting_on"] == ["editor"] and run["approvals"] == ["editor"]
        assert run["input"] == {"title": "owls"} and run["finished"] is False
        graph = run["graph"]
        assert graph["source"] == "app"
        assert {n["id"]: n["status"] for n in graph["nodes"]} == {
            "writer": "completed", "editor": "waiting", "publisher": "idle"}
        assert graph["edges"] == [{"source": "writer", "target": "editor"}, {"source": "editor", "target": "publisher"}]

        assert client.get("/api/runs/nope").status_code == 404
        assert client.get("/api/runs/%20").status_code == 400
        form = client.post("/api/runs/r-a/resolve", content=b"name=editor&value=true",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415  # what another site's plain form could send
        assert client.post("/api/runs/r-a/resolve", json={"value": True}).status_code == 400
        refused = client.post("/api/runs/r-a/resolve", json={"name": "editor", "value": "maybe"})
        assert refused.status_code == 409 and "is an approval" in refused.json()["error"]
        assert client.post("/api/runs/nope/resolve", json={"name": "editor", "value": True}).status_code == 404

        rejected = client.post("/api/runs/r-b/resolve", json={"name": "editor", "value": False})
        assert rejected.status_code == 200, rejected.text
        approved = client.post("/api/runs/r-a/resolve", json={"name": "editor", "value": True})
        assert approved.status_code == 200, approved.text

        deadline = time.monotonic() + WAIT  # the UI's process resumes both runs (no other process runs them)
        while {r["status"] for r in client.get("/api/runs").json()["runs"]} != {"completed"}:
            assert time.monotonic() < deadline, client.get("/api/runs").json()
            time.sleep(0.05)
        a, b = client.get("/api/runs/r-a").json(), client.get("/api/runs/r-b").json()
        assert {n["id"]: n["status"] for n in a["graph"]["nodes"]}["publisher"] == "completed"
        assert {n["id"]: n["status"] for n in b["graph"]["nodes"]} == {
            "writer": "completed", "editor": "rejected", "publisher": "idle"}
        again = client.post("/api/runs/r-a/resolve", json={"name": "editor", "value": True})
        assert again.status_code == 409 and "completed" in again.json()["error"]


def test_graph_without_the_apps_code_comes_from_the_activations() -> None:
    record = RunRecord("r", "x", "waiting", "restate", waiting_on=["b"], activations=[
        ActivationRecord("a1", "a", "entry", "completed"),
        ActivationRecord("b1", "b", "message", "running", cause="a1"),
        ActivationRecord("c1", "c", "message", "completed", cause="a1"),
    ])
    graph = graph_json(record, None)
    assert graph["source"] == "activations"
    assert [(n["id"], n["status"], n["entry"], n["approval"]) for n in graph["nodes"]] == [
        ("a", "completed", True, False), ("b", "waiting", False, True), ("c", "completed", False, False)]
    assert graph["edges"] == [{"source": "a", "target": "b"}, {"source": "a", "target": "c"}]
