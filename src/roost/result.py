"""What a run produced: RunRecord (backend-neutral, JSON) and RunResult (typed, for users)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._codec import revive
from .errors import RunFailedError

if TYPE_CHECKING:
    from ._graph import CompiledApp

FINISHED = ("completed", "failed", "cancelled")
"""A run's statuses once it has ended (a run is never "rejected": its activations may be)."""


@dataclass
class StepRecord:
    position: int | str
    """The step's place in its activation: 3 at the top level, "1.0:3" in a concurrent branch."""
    kind: str  # step | sleep | promise | now | send | call
    name: str
    status: str  # done | retrying | failed | waiting
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    value: Any = None
    error: str | None = None


@dataclass
class ActivationRecord:
    id: str
    agent: str
    kind: str
    status: str  # pending | running | completed | rejected | absorbed | failed | cancelled
    cause: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    """A failed activation: its error's attempts (those of the failing step, 1 outside any step);
    otherwise the most attempts any of its steps needed."""
    output: Any = None
    error: dict[str, Any] | None = None
    """agent, step, attempts, error_type, error_message and, when user code raised it, traceback."""
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class RunRecord:
    run_id: str
    app: str
    status: str  # running | waiting | completed | failed
    runtime: str
    input: Any = None
    created_at: float = 0.0
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    activations: list[ActivationRecord] = field(default_factory=list)
    waiting_on: list[str] = field(default_factory=list)
    """Names of promises (approvals) the run waits for."""


class RunResult:
    """The outcome of a run: ``result["editor"]`` is that agent's output (a list if it ran more
    than once); ``status``, ``run_id``, ``timings`` and ``attempts`` describe the run."""

    def __init__(self, record: RunRecord, app: CompiledApp | None = None) -> None:
        self.record = record
        self.run_id = record.run_id
        self.status = record.status
        self._outputs: dict[str, list[Any]] = {}
        for a in record.activations:
            if a.status in ("completed", "rejected") and a.output is not None:
                spec = app.specs.get(a.agent) if app else None
                value = revive(a.output, spec.output_type) if spec else a.output
                self._outputs.setdefault(a.agent, []).append(value)

    def __getitem__(self, agent: str) -> Any:
        values = self._outputs[agent]
        return values[0] if len(values) == 1 else list(values)

    def __contains__(self, agent: object) -> bool:
        return agent in self._outputs

    def get(self, agent: str, default: Any = None) -> Any:
        return self[agent] if agent in self._outputs else default

    def all(self, agent: str) -> list[Any]:
        """Every output of ``agent`` in this run, in order (empty if it never produced)."""
        return list(self._outputs.get(agent, []))

    @property
    def outputs(self) -> dict[str, Any]:
        return {name: self[name] for name in self._outputs}

    @property
    def agent_status(self) -> dict[str, str]:
        """Per agent: completed, rejected, failed, ... (the last activation's status)."""
        out: dict[str, str] = {}
        for a in self.record.activations:
            if a.status != "absorbed":
                out[a.agent] = a.status
        return out

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent per agent (summed over its activations)."""
        out: dict[str, float] = {}
        for a in self.record.activations:
            if a.duration is not None and a.status != "absorbed":
                out[a.agent] = out.get(a.agent, 0.0) + a.duration
        return out

    @property
    def attempts(self) -> dict[str, int]:
        """Attempts per agent: its activations' most (see ``ActivationRecord.attempts``)."""
        out: dict[str, int] = {}
        for a in self.record.activations:
            if a.status != "absorbed":
                out[a.agent] = max(out.get(a.agent, 0), a.attempts)
        return out

    @property
    def error(self) -> RunFailedError | None:
        return RunFailedError.from_json(self.run_id, self.record.error) if self.record.error else None

    def __repr__(self) -> str:
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r}, outputs={self.outputs!r})"
