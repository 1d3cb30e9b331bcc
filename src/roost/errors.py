"""Every error roost raises, in one hierarchy.

::

    RoostError
    ├── DefinitionError            the app is wired wrong (raised when App is built)
    ├── InputValidationError       a run input does not fit the entry contract (no run started)
    ├── ConfigError                a setting or runtime name is wrong
    │   └── MissingExtraError      an optional backend is not installed (says what to pip install)
    ├── BackendError               a prod runtime (Restate, Temporal) cannot be reached or refused a request
    ├── JournalError               the journal cannot be used as it is
    │   ├── JournalVersionError    written by an incompatible roost version
    │   ├── JournalBusyError       another process held the journal's write lock past the bounded wait
    │   └── NonDeterminismError    replay asked for something other than what was recorded
    ├── RunError                   about one run (carries run_id)
    │   ├── RunNotFoundError
    │   ├── RunConflictError       same run id, different input or app
    │   ├── RunFailedError         an agent failed for good; carries agent, step, attempts, cause, traceback
    │   ├── StepFailedError        a step failed after its retry policy (seen inside orchestration code)
    │   ├── ActivationLimitError   a loop went past the per-run activation limit
    │   ├── PromiseError           resolving a finished run, a resolved or unknown name, an approval with no yes/no
    │   ├── CancelError            cancelling a finished run (completed, failed, rejected); a fault while cancelling
    │   ├── RunTimeoutError        a run did not finish within the time a caller waited (it goes on)
    │   ├── CallFailedError        ctx.call: the callee failed, was rejected or was cancelled
    │   └── CallCycleError         ctx.call to an agent already waiting up the call chain
    ├── UsageError                 a roost call got an invalid argument (blank run id, NaN duration, ...)
    ├── TerminalError              raise it in a step to fail at once, never retried
    │   ├── ContractViolationError an engine's output does not fit the output contract
    │   └── SerializationError     a step result or payload cannot be journaled as JSON
    └── RetryableError             raise it in a step to ask for a retry (optionally after a delay)

Control-flow signals used internally (suspension, cancellation) derive from
``BaseException`` so that a user's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

import math
from typing import Any

from ._traceback import raised_at

__all__ = [
    "ActivationLimitError",
    "BackendError",
    "CallCycleError",
    "CallFailedError",
    "ConfigError",
    "ContractViolationError",
    "DefinitionError",
    "InputValidationError",
    "JournalBusyError",
    "JournalError",
    "JournalVersionError",
    "MissingExtraError",
    "NonDeterminismError",
    "PromiseError",
    "RetryableError",
    "RoostError",
    "RunConflictError",
    "RunError",
    "RunFailedError",
    "RunNotFoundError",
    "RunTimeoutError",
    "SerializationError",
    "StepFailedError",
    "TerminalError",
    "UsageError",
]


class RoostError(Exception):
    """Base of every error roost raises on purpose."""


class DefinitionError(RoostError):
    """The agents or their wiring are wrong; raised when the App is built."""


class InputValidationError(RoostError):
    """A run input does not validate against any entry agent's input contract."""

    def __init__(self, message: str, *, agent: str | None = None, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.agent = agent
        self.errors = errors or []


class ConfigError(RoostError):
    """A configuration value (runtime name, path, durability mode) is wrong."""


class MissingExtraError(ConfigError):
    """An optional backend's dependencies are not installed."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f'{feature} needs the optional dependencies: pip install "roost[{extra}]"')
        self.extra = extra


class BackendError(RoostError):
    """A prod runtime's server cannot be reached, or answered a request with an error."""


class JournalError(RoostError):
    """The journal cannot be used as it is."""


class JournalVersionError(JournalError):
    """The journal was written by an incompatible version of roost."""


class JournalBusyError(JournalError):
    """Another process held the journal's write lock for longer than roost waits (``path``: the file)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class NonDeterminismError(JournalError):
    """Replaying orchestration code asked for a different step than the journal recorded."""

    def __init__(self, *, run_id: str, agent: str, position: int | str, recorded: str, requested: str) -> None:
        super().__init__(
            f"run {run_id!r}, agent {agent!r}: on replay, journal entry #{position} was recorded as "
            f"{recorded} but the code now asks for {requested}. Orchestration code (an engine taking "
            "ctx) must call ctx.step/sleep/promise in the same order each time; put anything that "
            "varies (time, randomness, I/O) inside a step."
        )
        self.run_id = run_id
        self.agent = agent
        self.position = position
        self.recorded = recorded
        self.requested = requested


class RunError(RoostError):
    """An error about one run."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFoundError(RunError):
    def __init__(self, run_id: str, where: str = "in the journal") -> None:
        super().__init__(f"no run with id {run_id!r} {where}", run_id=run_id)


class RunConflictError(RunError):
    """The run id exists already, for a different input or a different app."""


class RunFailedError(RunError):
    """An agent failed after its retry policy; the run is failed.

    ``agent``, ``step`` and ``attempts`` say where; ``error_type`` and ``error_message``
    describe the last exception. ``attempts`` is how many times the failing step's function was
    invoked (1 when the agent's code failed outside any step); the activation and step records
    of the run show the same number. ``traceback`` is the user's traceback of the last exception
    (formatted where it was raised, also in another process, without roost's frames), or None
    when no user code raised it; the message names the file and line it was raised at, and the
    full text is added as a note, so an uncaught error prints it.
    """

    def __init__(
        self,
        *,
        run_id: str,
        agent: str,
        step: str | None,
        attempts: int,
        error_type: str,
        error_message: str,
        traceback: str | None = None,
    ) -> None:
        where = f"agent {agent!r}" + (f", step {step!r}" if step else "")
        at = raised_at(traceback)
        super().__init__(
            f"run {run_id!r} failed: {where} failed after {attempts} attempt(s): {error_type}: {error_message}"
            + (f" (raised at {at})" if at else ""),
            run_id=run_id,
        )
        self.agent = agent
        self.step = step
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        if traceback:
            self.add_note(f"Where it was raised (roost's frames left out):\n{traceback}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent": self.agent,
            "step": self.step,
            "attempts": self.attempts,
            "error_type": self.error_type,
            "error_message": self.error_message,
        }
        if self.traceback is not None:
            data["traceback"] = self.traceback
        return data

    @classmethod
    def from_json(cls, run_id: str, data: dict[str, Any]) -> RunFailedError:
        return cls(
            run_id=run_id,
            agent=data["agent"],
            step=data.get("step"),
            attempts=int(data.get("attempts", 0)),
            error_type=data.get("error_type", "Error"),
            error_message=data.get("error_message", ""),
            traceback=data.get("traceback"),
        )


class StepFailedError(RunError):
    """A durable step failed after its retry policy. Orchestration code may catch it; if it does
    not, the agent fails and so does the run."""

    def __init__(self, *, run_id: str, agent: str, step: str, attempts: int, cause: BaseException) -> None:
        super().__init__(
            f"run {run_id!r}: agent {agent!r}, step {step!r} failed after {attempts} attempt(s): "
            f"{type(cause).__name__}: {cause}",
            run_id=run_id,
        )
        self.agent = agent
        self.step = step
        self.attempts = attempts
        self.cause = cause


class ActivationLimitError(RunError):
    """A run activated agents more often than its limit allows (an unbounded loop)."""


class PromiseError(RunError):
    """A promise or approval cannot be resolved as asked."""


class RunTimeoutError(RunError, TimeoutError):
    """The caller stopped waiting for a run; the run itself is not cancelled and can be resumed."""


class CancelError(RunError):
    """A run cannot be cancelled: it finished already (cancelling a cancelled run is no error), or
    roost itself failed while cancelling it (the message says whether the request was recorded)."""


class CallFailedError(RunError):
    """``ctx.call``: the callee ended ``failed``, ``rejected`` or ``cancelled`` instead of answering."""

    def __init__(self, message: str, *, run_id: str, callee: str, status: str) -> None:
        super().__init__(message, run_id=run_id)
        self.callee = callee
        self.status = status


class CallCycleError(RunError):
    """``ctx.call`` to an agent that is already waiting up the call chain: it would wait forever."""


class UsageError(RoostError, ValueError):
    """A roost call got an argument it cannot use (a NaN or negative duration, an unknown agent)."""


class TerminalError(RoostError):
    """Fails the step (and its agent) at once, without retries."""


class ContractViolationError(TerminalError):
    """An engine produced output that does not fit the agent's output contract."""


class SerializationError(TerminalError):
    """A value cannot be journaled: it is not JSON-serializable."""


class RetryableError(RoostError):
    """Asks for the step to be retried, after ``retry_after`` seconds if given."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
                                        or not math.isfinite(retry_after) or retry_after < 0):
            # A NaN or infinite wait would stall the step for ever instead of retrying it.
            raise UsageError(f"RetryableError.retry_after must be a finite number of seconds >= 0 or None, "
                             f"got {retry_after!r}")
        super().__init__(message)
        self.retry_after = retry_after
