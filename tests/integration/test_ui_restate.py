"""``roost ui --runtime restate`` against a real restate-server, through its JSON API: the list
shows a run waiting on an approval, its record and graph (from its activations: the UI has no app
code for a Restate run), and resolving it from the API lets the run finish under ``roost serve``.
Every process is stopped by pid; every wait is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import restate_env
from tests.restate_support import start_test_server
from tests.ui_support import WAIT, check_waiting_run, get, resolve_to_completion, ui_of_a_waiting_run

pytest.importorskip("restate")
pytest.importorskip("starlette")

from roost.runtime.restate._server import RestateServer  # noqa: E402

pytestmark = pytest.mark.restate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    with start_test_server(tmp_path_factory.mktemp("restate-ui")) as started:
        yield started


def test_ui_api_on_restate(server: RestateServer, tmp_path: Path) -> None:
    env = restate_env(server, tmp_path)
    with ui_of_a_waiting_run(env, tmp_path, "restate", "ui_restate", "ui-r1", served="serving app") as (base, running):
        assert get(f"{base}/api/runs", status="completed").json()["runs"] == []
        check_waiting_run(base, "ui-r1", "restate", "ui_restate")
        page = get(f"{base}/runs/ui-r1")
        assert page.status_code == 200 and "<title>roost run</title>" in page.text  # the page draws from the API

        done = resolve_to_completion(base, "ui-r1")
        assert done["waiting_on"] == []
        assert running.wait(timeout=WAIT) == 0, (tmp_path / "run.out").read_text()
        assert "ABOUT OWLS" in (tmp_path / "run.out").read_text()
