"""Engines turn an agent's input into its output: plain functions, the mock, (later) models."""

from ._base import Engine
from .function import FunctionEngine
from .mock import MockEngine, mock_value

__all__ = ["Engine", "FunctionEngine", "MockEngine", "mock_value"]
