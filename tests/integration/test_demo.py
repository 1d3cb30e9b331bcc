"""The README's demo (examples/newsroom.py) as users run it: plain functions by default, the LLM
engine when a model endpoint is configured, and unchanged on Temporal with ROOST_RUNTIME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from roost.testing import FakeModelServer
from roost.testing.fake_model import Reply

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "newsroom.py"


def _run(cwd: Path, env: dict[str, str], *args: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("ROOST_", "OPENAI_")) and k not in ("ROOST_LLM_BASE_URL",)}
    done = subprocess.run([sys.executable, str(DEMO), *args], cwd=cwd, env={**base, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_plain_functions_without_a_model_endpoint(tmp_path: Path) -> None:
    out = _run(tmp_path, {})
    assert "engines: plain functions" in out
    assert "status: completed" in out and "publisher" in out


def _answer(body: dict[str, Any]) -> Reply:
    schema = json.dumps(body.get("response_format", {}))
    if "score" in schema:
        return Reply.answer({"score": 7, "notes": "fine"})
    if "claims_checked" in schema:
        return Reply.answer({"claims_checked": 3, "problems": []})
    return Reply.answer({"title": "Model title", "body": "Model body."})


def test_the_llm_engine_when_an_endpoint_is_configured(tmp_path: Path) -> None:
    with FakeModelServer() as server:
        server.always("*", _answer)
        out = _run(tmp_path, {"ROOST_LLM_BASE_URL": server.base_url, "ROOST_DEMO_MODEL": "compatible/demo"})
        assert len(server.requests()) == 3, "writer, critic and fact_checker: one model call each"
    assert "engines: the LLM engine (compatible/demo" in out
    assert '"title": "Model title"' in out and "status: completed" in out


@pytest.mark.temporal
def test_the_same_demo_on_temporal(tmp_path: Path) -> None:
    from roost.runtime.temporal import TemporalDevServer

    with TemporalDevServer(tmp_path / "temporal") as server:
        out = _run(tmp_path, {"ROOST_RUNTIME": "temporal", "ROOST_TEMPORAL_ADDRESS": server.address}, "--prod")
    assert "status: completed" in out and "publisher" in out
