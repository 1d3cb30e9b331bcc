"""Engines turn an agent's input into its output: plain functions, the mock, models (``llm/``)."""

from ._base import Engine
from .function import FunctionEngine
from .llm import LLMEngine, Tool, tool
from .mock import MockEngine, mock_value

__all__ = ["Engine", "FunctionEngine", "LLMEngine", "MockEngine", "Tool", "mock_value", "tool"]
