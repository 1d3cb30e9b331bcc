from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._graph import AgentSpec
    from ..runtime import DurableContext


class Engine(ABC):
    """Produces an agent's output. ``args`` holds one value per input (several when converging)."""

    awaits_promises: bool = True
    """Whether ``run`` may call ``ctx.promise`` (orchestration code may, with any name). An engine
    that only runs steps says False, so that resolving a promise no run of its app can wait on
    is refused instead of kept for ever."""

    def check(self, spec: AgentSpec) -> None:  # noqa: B027 - optional hook
        """Raise DefinitionError if this engine cannot serve ``spec``; called when App is built."""

    @abstractmethod
    async def run(self, ctx: DurableContext, spec: AgentSpec, args: tuple[Any, ...]) -> Any: ...
