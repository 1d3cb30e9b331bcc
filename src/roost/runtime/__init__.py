"""The DurableRuntime interface and the registry of backends.

Backends live in ``roost.runtime.<name>`` and are imported only when asked for by name, so the
core never imports an engine's SDK.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import ConfigError
from ._base import (
    DurableContext,
    DurableRuntime,
    PruneReport,
    RunSummary,
    State,
    StepInfo,
    Submission,
    current_step,
)
from ._retry import RetryPolicy

__all__ = [
    "DurableContext",
    "DurableRuntime",
    "PruneReport",
    "RetryPolicy",
    "RunSummary",
    "State",
    "StepInfo",
    "Submission",
    "current_step",
    "get_runtime",
]

# name -> (module, class, extra that installs its dependencies)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "local": ("roost.runtime.local", "LocalRuntime", None),
    "restate": ("roost.runtime.restate", "RestateRuntime", "restate"),
    "temporal": ("roost.runtime.temporal", "TemporalRuntime", "temporal"),
}
_PLANNED: set[str] = set()


def get_runtime(name: str | None = None, **options: Any) -> DurableRuntime:
    """A runtime by name (``local``, ``restate``, ``temporal``; default from ``ROOST_RUNTIME``, else ``local``).

    A backend whose optional dependencies are missing raises MissingExtraError with the
    ``pip install`` command."""
    name = (name or os.environ.get("ROOST_RUNTIME") or "local").lower()
    if name not in _BACKENDS:
        if name in _PLANNED:
            raise ConfigError(f"the {name!r} runtime is not available in this version of roost; use 'local'")
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(sorted(_BACKENDS))}")
    module, cls, _extra = _BACKENDS[name]
    backend: type[DurableRuntime] = getattr(importlib.import_module(module), cls)
    return backend(**options)
