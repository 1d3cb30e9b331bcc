"""roost: typed, reactive multi-agent pipelines that survive crashes.

Layout: the definition API (``agent``, ``App``) and the wiring graph (``_graph``) are the core;
``roost.runtime`` holds the DurableRuntime interface, with each backend in its own subpackage
loaded by name; ``roost.engines`` turns inputs into outputs; ``roost.testing`` is the test kit;
``roost.errors`` is the one error hierarchy.
"""

from .agent import Agent, agent
from .app import App, RunHandle
from .engines import Engine, MockEngine, Tool, tool
from .errors import (
    ContractViolationError,
    DefinitionError,
    InputValidationError,
    RetryableError,
    RoostError,
    RunFailedError,
    TerminalError,
)
from .result import RunResult
from .runtime import DurableContext, RetryPolicy, current_step

__all__ = [
    "Agent",
    "App",
    "ContractViolationError",
    "DefinitionError",
    "DurableContext",
    "Engine",
    "InputValidationError",
    "MockEngine",
    "RetryPolicy",
    "RetryableError",
    "RoostError",
    "RunFailedError",
    "RunHandle",
    "RunResult",
    "TerminalError",
    "Tool",
    "agent",
    "current_step",
    "tool",
]

__version__ = "0.1.0"
