"""What crosses the run engine's seams: its events, its commands, and the activations it starts.

Everything here is a frozen dataclass holding JSON-able values, so a backend can persist events
as they are (``encode``/``decode``) and replay them to rebuild the engine after a crash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from .._redact import redact_text
from .._traceback import user_traceback

ActivationKind = Literal["entry", "edge", "converge", "gather", "send", "call"]
FinishStatus = Literal["completed", "failed", "cancelled"]
RunStatus = Literal["running", "completed", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an activation or a run failed: where (agent, step, attempts) and the last cause.

    ``attempts`` is how many times the failing step's function was invoked (1 when the agent's
    code failed outside any step); ``traceback`` is the user's traceback of the last exception,
    formatted where it was raised, without roost's frames (None when no user code raised it)."""

    agent: str
    step: str | None
    attempts: int
    error_type: str
    error_message: str
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"agent": self.agent, "step": self.step, "attempts": self.attempts,
                                "error_type": self.error_type, "error_message": self.error_message}
        if self.traceback is not None:
            data["traceback"] = self.traceback
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(data["agent"], data.get("step"), int(data.get("attempts", 1)), data.get("error_type", "Error"),
                   data.get("error_message", ""), data.get("traceback"))


BatchRef = tuple[str, int, int]
"""One item of a batch: (batch id, index, size): the ``index``-th of ``size`` items of one list
output sent with ``each=True``; the batch id names the producing activation and the edge. A
plain tuple of strings and ints, which the garbage collector stops tracking: a fan-out of 100k
pending items costs it almost nothing to walk."""

BatchPath = tuple[BatchRef, ...]


def batch_label(path: BatchPath) -> str:
    """``2`` or ``1.3``: the item indexes of a batch path, outermost first."""
    return ".".join(str(b[1]) for b in path)


def activation_id(target: str, *parts: object) -> str:
    """A deterministic activation id from what caused it (never from timing or order)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).hexdigest()
    return f"{target}:{digest}"


def entity_key(run_id: str, batch: BatchPath) -> str:
    """Default entity key of an activation: the run, plus its item path inside ``each`` fan-outs."""
    return run_id + "".join(
        f"/{hashlib.blake2b(b[0].encode(), digest_size=3).hexdigest()}.{b[1]}" for b in batch
    )


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation the engine starts: ``agent`` on ``args`` (one JSON value per input)."""

    id: str
    agent: str
    kind: ActivationKind
    args: tuple[Any, ...]
    cause: str | None = None
    batch: BatchPath = ()
    not_before: float | None = None
    """Wall-clock time before which it must not start (a delayed ``ctx.send``)."""
    reply_to: str | None = None
    """For ``call`` activations: the reply key the caller waits on."""
    call_chain: tuple[str, ...] = ()
    """Agents waiting, through ``ctx.call``, for this activation (outermost first)."""


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStarted:
    entries: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ActivationFinished:
    activation: str
    status: FinishStatus
    output: Any = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class MessageSent:
    """``ctx.send`` (one-way) or ``ctx.call`` (waits for ``reply_to``) from a running activation."""

    sender: str
    position: str
    target: str
    kind: Literal["send", "call"]
    payload: Any
    deliver_at: float | None = None


@dataclass(frozen=True, slots=True)
class PromiseResolved:
    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str = "cancelled"


Event = RunStarted | ActivationFinished | MessageSent | PromiseResolved | CancelRequested

def failed_activation(spec: Activation, step: str | None, attempts: int, exc: BaseException) -> ActivationFinished:
    """``spec`` failed with ``exc`` (at ``step``, after ``attempts``): the event naming agent, step,
    cause and the user's traceback. A step that failed inside another engine carries its original
    type name (``kind``) and traceback text (``user_traceback``)."""
    kind = getattr(exc, "kind", None) or type(exc).__name__
    # What the run keeps and shows (journal, record, CLI, UI): credentials in URLs are masked.
    trace = user_traceback(exc)
    return ActivationFinished(spec.id, "failed", error=ErrorInfo(
        spec.agent, step, max(1, attempts), str(kind), redact_text(str(exc) or repr(exc)),
        redact_text(trace) if trace else trace))


# -- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartActivation:
    activation: Activation


@dataclass(frozen=True, slots=True)
class AwaitApproval:
    """The output of ``activation`` waits until the promise ``name`` is resolved."""

    name: str
    activation: str


@dataclass(frozen=True, slots=True)
class Reply:
    status: Literal["completed", "rejected", "failed", "cancelled"]
    output: Any = None
    error: ErrorInfo | None = None
    callee: str = ""


@dataclass(frozen=True, slots=True)
class DeliverReply:
    caller: str
    key: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class AbortActivations:
    """Stop these running activations: the run failed or was cancelled."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FinishRun:
    status: RunStatus
    error: ErrorInfo | None = None


Command = StartActivation | AwaitApproval | DeliverReply | AbortActivations | FinishRun


# -- persistence ----------------------------------------------------------------------------

_EVENT_TYPES: dict[str, type[Any]] = {
    "started": RunStarted, "finished": ActivationFinished, "sent": MessageSent,
    "resolved": PromiseResolved, "cancel": CancelRequested,
}
_TAGS = {v: k for k, v in _EVENT_TYPES.items()}
_FIELDS = {cls: tuple(cls.__dataclass_fields__) for cls in _EVENT_TYPES.values()}


def encode(event: Event) -> dict[str, Any]:
    """The event as a JSON-able dict (a ``t`` tag plus its fields)."""
    data: dict[str, Any] = {"t": _TAGS[type(event)]}
    for name in _FIELDS[type(event)]:
        value = getattr(event, name)
        if isinstance(value, ErrorInfo):
            value = value.to_json()
        elif name == "entries":
            value = [list(e) for e in value]
        data[name] = value
    return data


def decode(data: dict[str, Any]) -> Event:
    fields = dict(data)
    cls = _EVENT_TYPES[fields.pop("t")]
    if cls is RunStarted:
        return RunStarted(tuple((str(a), p) for a, p in fields["entries"]))
    if cls is ActivationFinished and fields.get("error") is not None:
        fields["error"] = ErrorInfo.from_json(fields["error"])
    event: Event = cls(**fields)
    return event


def encode_activation(spec: Activation) -> dict[str, Any]:
    """An activation as JSON (for backends that hand it to another process or invocation)."""
    return {"id": spec.id, "agent": spec.agent, "kind": spec.kind, "args": list(spec.args), "cause": spec.cause,
            "batch": [list(b) for b in spec.batch], "not_before": spec.not_before, "reply_to": spec.reply_to,
            "call_chain": list(spec.call_chain)}


def decode_activation(data: dict[str, Any]) -> Activation:
    return Activation(data["id"], data["agent"], data["kind"], tuple(data["args"]), data.get("cause"),
                      tuple((str(b[0]), int(b[1]), int(b[2])) for b in data.get("batch") or ()),
                      data.get("not_before"), data.get("reply_to"), tuple(data.get("call_chain") or ()))
