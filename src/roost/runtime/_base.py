"""The DurableRuntime interface: what engines see (DurableContext) and what backends provide.

Core code (agents, wiring, the activation logic) talks only to these abstract classes;
each backend under ``roost.runtime.<name>`` implements them.
"""

from __future__ import annotations

import contextvars
import json
import random as _random
import uuid as _uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .._codec import dumps
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from .._graph import CompiledApp
    from ..result import RunRecord

T = TypeVar("T")


class RunAborted(BaseException):
    """Internal: the run failed elsewhere; a waiting activation stops (not a user error)."""


@dataclass(frozen=True)
class StepInfo:
    """What a running step may know about itself (read it with :func:`current_step`)."""

    run_id: str
    agent: str
    name: str
    attempt: int
    idempotency_key: str
    """Stable across retries and recoveries: pass it to external APIs to deduplicate."""
    activation_id: str = ""
    caused_by: str | None = None
    """The activation whose output caused this step's activation (None for entry activations)."""


_current_step: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar("roost_step", default=None)


def current_step() -> StepInfo:
    """The step being executed; raises RuntimeError outside a step."""
    info = _current_step.get()
    if info is None:
        raise RuntimeError("roost.current_step() called outside a durable step")
    return info


class State(ABC):
    """Key/value state of one entity (an agent and a key), committed with the activation."""

    @abstractmethod
    async def get(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set(self, key: str, value: Any) -> None: ...

    @abstractmethod
    def clear(self, key: str) -> None: ...

    @abstractmethod
    async def keys(self) -> list[str]: ...


class BufferedState(State):
    """Writes kept in ``writes`` (JSON text; None for a cleared key) over the state the runtime
    stored, which it reads only when asked; the runtime commits ``writes`` with the activation."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.writes: dict[str, str | None] = {}

    @abstractmethod
    async def stored(self, key: str) -> str | None:
        """The stored value of ``key`` (JSON text), None if it has none."""

    @abstractmethod
    async def stored_keys(self) -> Iterable[str]: ...

    async def get(self, key: str, default: Any = None) -> Any:
        raw = self.writes[key] if key in self.writes else await self.stored(key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.writes[key] = dumps(value, what=f"state {key!r} of agent {self.agent!r}")

    def clear(self, key: str) -> None:
        self.writes[key] = None

    async def keys(self) -> list[str]:
        live = {k for k in await self.stored_keys() if k not in self.writes}
        live |= {k for k, v in self.writes.items() if v is not None}
        return sorted(k for k in live if not k.startswith("__roost."))


class DurableContext(ABC):
    """The handle orchestration code receives as ``ctx``.

    Every call is journaled: after a crash the code is replayed and each call returns what it
    returned the first time. Code between calls must do the same thing each time; put side
    effects (I/O, clocks, randomness) inside ``step``.
    """

    run_id: str
    """The run id, which is also the correlation id of every message in the run."""
    agent: str
    activation_id: str
    caused_by: str | None
    """The activation whose output caused this one (None for entry activations)."""

    @property
    @abstractmethod
    def state(self) -> State: ...

    @abstractmethod
    async def step(
        self,
        name: str,
        fn: Callable[..., T] | Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn`` at least once until its result is journaled, and never again after."""

    @abstractmethod
    async def sleep(self, duration: float | timedelta) -> None:
        """A durable timer: survives restarts and fires once the duration has passed."""

    @abstractmethod
    async def promise(self, name: str) -> Any:
        """Wait for a value resolved from outside the run (``app.resolve(run_id, name, v)``)."""

    @abstractmethod
    async def now(self) -> datetime:
        """The current time, journaled (the same value on replay)."""

    @abstractmethod
    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        """One-way message that activates ``agent`` in this run, optionally after ``delay``."""

    @abstractmethod
    async def call(self, agent: str, payload: Any) -> Any:
        """Request/response: activate ``agent`` in this run and wait for its output."""

    def _seed(self) -> int:
        return int.from_bytes(_uuid.uuid5(_uuid.NAMESPACE_URL, f"{self.run_id}/{self.activation_id}").bytes[:8], "big")

    def uuid(self) -> _uuid.UUID:
        """A UUID that is the same on replay (derived from the activation id and a counter)."""
        return _uuid.UUID(int=self._rng().getrandbits(128), version=4)

    def random(self) -> _random.Random:
        """A random generator seeded per activation: the same numbers on replay."""
        return self._rng()

    def _rng(self) -> _random.Random:
        rng: _random.Random | None = getattr(self, "_roost_rng", None)
        if rng is None:
            rng = _random.Random(self._seed())
            self._roost_rng = rng
        return rng


@dataclass
class RunSummary:
    run_id: str
    app: str
    status: str
    created_at: float
    finished_at: float | None
    runtime: str
    version: str | None = None
    """The app's wiring version that started the run (its fingerprint's first 8 characters):
    after a deploy, runs of another version show here (see docs/operations.md, "Deploys")."""


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`DurableRuntime.prune` did."""

    pruned: int
    """Finished runs deleted (with ``dry_run``: the runs that would be)."""
    note: str | None = None
    """Set when the backend's server deletes finished runs by itself: how, and where to change it."""


@dataclass
class Submission:
    """A run as handed to a runtime: the app, the entry messages and the run's identity."""

    app: CompiledApp
    run_id: str
    input_json: str
    input_hash: str
    entries: list[tuple[str, Any]] = field(default_factory=list)


class DurableRuntime(ABC):
    """What a backend provides to run apps durably. One instance serves one event loop."""

    name: str

    @abstractmethod
    async def open(self) -> None:
        """Connect, and pick up unfinished runs this runtime is responsible for."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def submit(self, submission: Submission) -> bool:
        """Start a run; idempotent on the run id. Returns False when the run existed already.

        Raises RunConflictError when the run id exists for another input or app.
        """

    @abstractmethod
    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Wait until the run is finished (completed or failed) and return its record."""

    @abstractmethod
    async def get(self, run_id: str) -> RunRecord:
        """The run's record as it is now."""

    @abstractmethod
    async def list_runs(self, limit: int = 50) -> list[RunSummary]: ...

    @abstractmethod
    async def resolve(self, run_id: str, name: str, value: Any) -> None:
        """Resolve the durable promise ``name`` of a run (approvals use the agent's name)."""

    @abstractmethod
    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Ask for the run to end ``cancelled`` (durably; the process that runs it carries it out):
        nothing new starts, waits (timers, promises, calls) are dropped, async steps are
        cancelled, a sync step already running finishes and is journaled. A cancelled run:
        nothing happens; a finished one: ``CancelError``; unknown: ``RunNotFoundError``."""

    @abstractmethod
    async def resume(self, app: CompiledApp, run_id: str) -> None:
        """Continue an unfinished run whose process died."""

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Delete every run that finished (completed, failed, cancelled) more than ``older_than``
        seconds ago, with all it recorded; unfinished runs are never touched. Backends whose
        server applies its own retention delete nothing and say so in the report's ``note``."""
        return PruneReport(0, f"the {self.name} runtime keeps no finished runs of its own")

    async def await_waiting(self, run_id: str) -> list[str] | None:
        """Block until the run waits on a promise (its names) or has finished (``[]``).

        None means this backend cannot block on that, and callers poll ``get`` instead."""
        return None

    async def __aenter__(self) -> DurableRuntime:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
