"""The LLM engine: ``.model("provider/name")`` agents with structured output and tools.

Modules: ``_settings`` (model strings, settings, endpoint and key resolution), ``_schema``
(output contract as JSON schema), ``_tools`` (``@tool``), ``_client`` (the ``openai`` SDK, imported
lazily; errors; concurrency), ``_engine`` (the tool loop as durable steps).
"""

from ._engine import LLMEngine, render_inputs
from ._schema import OutputSchema, strict_schema
from ._settings import ModelRef, ModelSettings, parse_model
from ._tools import Tool, as_tool, tool

__all__ = [
    "LLMEngine",
    "ModelRef",
    "ModelSettings",
    "OutputSchema",
    "Tool",
    "as_tool",
    "parse_model",
    "render_inputs",
    "strict_schema",
    "tool",
]
