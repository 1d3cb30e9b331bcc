"""The Temporal backend (``pip install "roost[temporal]"``), opt-in with ``ROOST_RUNTIME=temporal``.

A run is a workflow (id = run id) whose code is roost's own orchestration; each step is an
activity named ``<agent>.<step>``; see docs/runtime.md.
"""

from ...errors import MissingExtraError

try:
    import temporalio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("the temporal runtime", "temporal") from exc

from ._runtime import TemporalRuntime
from ._server import TemporalDevServer

__all__ = ["TemporalDevServer", "TemporalRuntime"]
