"""The JSON API of ``roost ui`` on the embedded journal, through Starlette's TestClient (no
browser, no port): listing by status, a run's record and graph, and what a resolution refuses.
The browser tests are in tests/integration/test_ui.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from roost.errors import RunFailedError  # noqa: E402
from roost.result import ActivationRecord, RunRecord, StepRecord  # noqa: E402
from roost.ui import RunSource, create_app  # noqa: E402
from roost.ui._data import graph_json  # noqa: E402
from tests.cli_support import write_app  # noqa: E402
from tests.ui_support import leave_waiting, run_to_end  # noqa: E402

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
        ActivationRecord("d1", "d", "message", "running", cause="c1",  # its code awaits ctx.promise("go")
                         steps=[StepRecord(0, "promise", "go", "waiting")]),
    ])
    graph = graph_json(record, None)
    assert graph["source"] == "activations"
    assert [(n["id"], n["status"], n["entry"], n["approval"]) for n in graph["nodes"]] == [
        ("a", "completed", True, False), ("b", "waiting", False, True), ("c", "completed", False, False),
        ("d", "waiting", False, False)]
    assert graph["edges"] == [{"source": "a", "target": "b"}, {"source": "a", "target": "c"},
                              {"source": "c", "target": "d"}]


def test_what_waited_when_the_run_ended_shows_the_runs_end() -> None:
    """A cancelled run's approval no longer waits: the timeline shows it ended with the run."""
    from roost.ui._data import record_json

    def record(status: str) -> RunRecord:
        return RunRecord("r", "x", status, "local", activations=[
            ActivationRecord("e1", "editor", "entry", "cancelled",
                             steps=[StepRecord("approval", "promise", "editor", "waiting"),
                                    StepRecord(0, "step", "draft", "done")])])

    steps = record_json(record("cancelled"), None)["activations"][0]["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("editor", "cancelled"), ("draft", "done")]
    live = record_json(record("waiting"), None)["activations"][0]["steps"]
    assert [(s["name"], s["status"]) for s in live] == [("editor", "waiting"), ("draft", "done")]


def test_bad_input_gets_a_clear_answer_not_a_crash(tmp_path: Path) -> None:
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(leave_waiting(app_file, journal, "r-a"))
    asyncio.run(run_to_end(write_app(tmp_path, file="plain.py", name="plain"), journal, "r-done"))

    with _client(journal) as client:
        bad = client.get("/api/runs", params={"status": "finished"})
        assert bad.status_code == 400, bad.text
        assert "unknown status 'finished'" in bad.json()["error"] and "completed" in bad.json()["error"]
        for status, ids in (("waiting", ["r-a"]), ("completed", ["r-done"]), ("failed", []), ("", ["r-done", "r-a"])):
            answer = client.get("/api/runs", params={"status": status})
            assert answer.status_code == 200 and [r["run_id"] for r in answer.json()["runs"]] == ids, answer.text

        page = client.get("/runs/nope")  # the page itself says so (and fills in the API's error)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert client.get("/runs/%20").status_code == 400
        assert client.get("/runs/r-a").status_code == 200

        done = client.post("/api/runs/r-done/resolve", json={"name": "editor", "value": True})
        assert done.status_code == 409 and done.json()["error"] == "run 'r-done' is completed: nothing waits for 'editor'"


SECRETS = '''
from pydantic import BaseModel
from roost import App, agent


class Topic(BaseModel):
    title: str


def fetch(t: Topic) -> Topic:
    if t.title == "fail":
        raise ConnectionError("https://bob:hunter22@db.example/q?api_key=SEKRET123 refused")
    return Topic(title=f"see https://bob:hunter22@db.example/q?token=TOK4567&page=2 about {t.title}")


fetcher = agent("fetcher").contracts(input=Topic, output=Topic).engine(fetch).retry(max_attempts=1)
app = App([fetcher], name="fetching")
'''


def test_the_api_masks_the_credentials_of_urls(tmp_path: Path) -> None:
    journal = tmp_path / "roost.db"
    app_file = tmp_path / "fetching.py"
    app_file.write_text(SECRETS)
    run_id = "r-https://carol:pw987654@x.example/"  # a run id is the run's name: kept as it is
    asyncio.run(run_to_end(app_file, journal, run_id, "owls"))
    with pytest.raises(RunFailedError):
        asyncio.run(run_to_end(app_file, journal, "r-fail", "fail"))

    with _client(journal) as client:
        ok = client.get(f"/api/runs/{quote(run_id, safe='')}")
        failed = client.get("/api/runs/r-fail")
        assert client.get(f"/runs/{quote(run_id, safe='')}").status_code == 200
    assert ok.status_code == failed.status_code == 200
    for answer in (ok, failed):
        for secret in ("hunter22", "SEKRET123", "TOK4567"):
            assert secret not in answer.text
    assert ok.json()["run_id"] == run_id
    assert ok.json()["activations"][0]["output"] == {
        "title": "see https://***@db.example/q?token=***&page=2 about owls"}
    assert failed.json()["error"]["error_message"] == "https://***@db.example/q?api_key=*** refused"


BLOCKING = '''
import pathlib
import time

from pydantic import BaseModel
from roost import App, agent


class Topic(BaseModel):
    title: str


def work(t: Topic) -> Topic:
    gate = pathlib.Path(__file__).with_name("gate")
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return t


worker = agent("worker").contracts(input=Topic, output=Topic).engine(work)
after = agent("after").contracts(input=Topic, output=Topic).engine(lambda t: t).reacts_to(worker)
app = App([worker, after], name="blocking")
'''


def test_a_running_agent_shows_as_running(tmp_path: Path) -> None:
    """On the embedded journal too, read by another runtime (as ``roost ui`` reads it): an agent
    whose code runs now is 'running' with its start time, not 'pending'."""
    journal = tmp_path / "roost.db"
    app_file = tmp_path / "blocking.py"
    app_file.write_text(BLOCKING)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(run_to_end(app_file, journal, "r-live"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        with _client(journal) as client:
            deadline = time.monotonic() + WAIT
            while True:
                answer = client.get("/api/runs/r-live")
                run = answer.json() if answer.status_code == 200 else {}
                if run.get("activations"):
                    break
                assert time.monotonic() < deadline and not failure, (answer.text, failure)
                time.sleep(0.05)
            deadline = time.monotonic() + WAIT
            while not run["activations"][0]["started_at"]:  # the start is written without waiting
                assert time.monotonic() < deadline, run
                time.sleep(0.05)
                run = client.get("/api/runs/r-live").json()
            assert run["status"] == "running" and run["activations"][0]["status"] == "running", run
            assert {n["id"]: n["status"] for n in run["graph"]["nodes"]} == {"worker": "running", "after": "idle"}
            (tmp_path / "gate").touch()
            runner.join(WAIT)
            assert not runner.is_alive() and not failure, failure
            done = client.get("/api/runs/r-live").json()
            assert done["status"] == "completed"
            assert [(a["agent"], a["status"]) for a in done["activations"]] == [
                ("worker", "completed"), ("after", "completed")]
    finally:
        (tmp_path / "gate").touch()
        runner.join(WAIT)
