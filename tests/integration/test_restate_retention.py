"""Restate keeps a finished run for the retention setting: roost registers it as the run
workflow's retention, and a real restate-server accepts it (including "forever")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from roost import App, agent

pytestmark = pytest.mark.restate
restate = pytest.importorskip("restate")

from roost.runtime.restate import RestateRuntime  # noqa: E402
from roost.runtime.restate._server import RestateServer, free_port  # noqa: E402
from tests.restate_support import start_test_server  # noqa: E402


class N(BaseModel):
    n: int


def inc(x: N) -> N:
    return N(n=x.n + 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    srv = start_test_server(tmp_path_factory.mktemp("restate-retention"))
    yield srv
    srv.stop()


@pytest.mark.parametrize(("setting", "millis"), [("36h", 36 * 3600 * 1000), ("forever", 36500 * 86400 * 1000)])
async def test_the_run_workflow_is_registered_with_the_retention(
        server: RestateServer, setting: str, millis: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no pyproject.toml with a retention of its own
    monkeypatch.setenv("ROOST_RETENTION", setting)
    name = f"keep{'long' if setting == 'forever' else 'short'}"
    app = App([agent("a").contracts(input=N, output=N).engine(inc)], name=name,
              runtime=RestateRuntime(ingress=server.ingress_url, admin=server.admin_url,
                                     endpoint=f"http://127.0.0.1:{free_port()}"))
    try:
        assert (await app.arun(N(n=1), timeout=60))["a"] == N(n=2)
    finally:
        await app.aclose()
    async with httpx.AsyncClient() as client:
        service = (await client.get(f"{server.admin_url}/services/roost.{name}.run", timeout=10)).json()
    retention = service.get("workflow_completion_retention")
    assert retention is not None, service
    # The admin API gives it in its own units ("1day 12h" or a number of ms, by version): compare both ways.
    assert retention == millis or _humantime_ms(str(retention)) == millis, retention


_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
            "d": 86_400_000, "day": 86_400_000, "days": 86_400_000, "month": 2_630_016_000,
            "months": 2_630_016_000, "y": 31_557_600_000, "year": 31_557_600_000, "years": 31_557_600_000}


def _humantime_ms(text: str) -> int | None:
    import re

    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or any(unit not in _UNIT_MS for _, unit in parts):
        return None
    return sum(int(n) * _UNIT_MS[unit] for n, unit in parts)
