"""The Restate backend (``pip install "roost[restate]"``).

Agents are Virtual Objects, ``reacts_to`` edges are one-way Restate messages between them, and a
run is a Workflow keyed by the run id with a ledger object beside it; see docs/runtime.md.
"""

from ...errors import MissingExtraError

try:
    import hypercorn  # noqa: F401
    import restate  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("the restate runtime", "restate") from exc

from ._runtime import RestateRuntime

__all__ = ["RestateRuntime"]
