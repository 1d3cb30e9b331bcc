"""The Restate backend (``pip install "roost[restate]"``).

A run is one Workflow invocation keyed by the run id, driving the run engine; ``keyed_by``
agents are Virtual Objects it calls. See docs/runtime.md.
"""

from ...errors import MissingExtraError

try:
    import hypercorn  # noqa: F401
    import restate  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("the restate runtime", "restate") from exc

from ._runtime import RestateRuntime

__all__ = ["RestateRuntime"]
