"""The conformance suite: every DurableRuntime guarantee, run on every runtime.

Backends add themselves to RUNTIMES (with whatever servers they need started once per session);
tests receive ``make_app``, which builds an App bound to the runtime under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from roost import Agent, App

RUNTIMES = ["local"]

MakeApp = Callable[..., App]


@pytest.fixture(params=RUNTIMES)
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_app(runtime_name: str, tmp_path: Path) -> AsyncIterator[MakeApp]:
    apps: list[App] = []

    def make(agents: Sequence[Agent], **options: Any) -> App:
        if runtime_name == "local":
            options.setdefault("journal", tmp_path / "journal.db")
        app = App(agents, name=options.pop("name", f"app{len(apps)}"), **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.aclose()
