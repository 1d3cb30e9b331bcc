"""Test kit for roost apps: deterministic engines, a scripted model server, journal helpers.

``MockEngine`` fills an agent's output contract from a hash of its input, so tests need no
model and no network; ``mock_engines`` gives every agent without an engine a MockEngine.
``FakeModelServer`` is an OpenAI-compatible server on loopback that answers LLM agents
(``.model(...)``) from a script of ``Reply`` values and logs every request.
"""

from __future__ import annotations

from ..agent import Agent
from ..engines import MockEngine, mock_value
from .fake_model import FakeModelServer, Reply

__all__ = ["FakeModelServer", "MockEngine", "Reply", "mock_engines", "mock_value"]


def mock_engines(*agents: Agent, **fixed: object) -> None:
    """Give each agent that has no engine yet a MockEngine (``fixed`` pins output fields)."""
    for a in agents:
        if a.engine_impl is None:
            a.engine(MockEngine(**fixed))
