"""``roost ui --runtime temporal`` against a real Temporal dev server, through its JSON API: the
list shows a run waiting on an approval, its record and graph (from its activations: the UI has
no app code for a Temporal run), and resolving it from the API lets the run finish under
``roost serve``. Every process is stopped by pid; every wait is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import temporal_env
from tests.ui_support import check_waiting_run, resolve_to_completion, ui_of_a_waiting_run

pytest.importorskip("temporalio")
pytest.importorskip("starlette")

from roost.runtime.temporal import TemporalDevServer  # noqa: E402

pytestmark = pytest.mark.temporal


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-ui")) as started:
        yield started


def test_ui_api_on_temporal(server: TemporalDevServer, tmp_path: Path) -> None:
    env = temporal_env(server.address, tmp_path)
    with ui_of_a_waiting_run(env, tmp_path, "temporal", "ui_temporal", "ui-t1", served="Ctrl-C stops") as (base, _):
        check_waiting_run(base, "ui-t1", "temporal", "ui_temporal")
        resolve_to_completion(base, "ui-t1")
