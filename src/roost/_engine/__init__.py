"""The run engine: a run's semantics in one pure state machine, shared by every runtime.

Events in (``RunStarted``, ``ActivationFinished``, ``MessageSent``, ``PromiseResolved``,
``CancelRequested``), commands out (``StartActivation``, ``AwaitApproval``, ``DeliverReply``,
``AbortActivations``, ``FinishRun``). ``_model`` holds the data that crosses the seam, ``_plan``
what is precomputed from the wiring, ``_engine`` the state machine.
"""

from ._engine import RouteError, RunEngine, is_approved
from ._model import (
    AbortActivations,
    Activation,
    ActivationFinished,
    ActivationKind,
    AwaitApproval,
    BatchPath,
    BatchRef,
    CancelRequested,
    Command,
    DeliverReply,
    ErrorInfo,
    Event,
    FinishRun,
    MessageSent,
    PromiseResolved,
    Reply,
    RunStarted,
    RunStatus,
    StartActivation,
    activation_id,
    batch_label,
    decode,
    encode,
    entity_key,
)

__all__ = [
    "AbortActivations",
    "Activation",
    "ActivationFinished",
    "ActivationKind",
    "AwaitApproval",
    "BatchPath",
    "BatchRef",
    "CancelRequested",
    "Command",
    "DeliverReply",
    "ErrorInfo",
    "Event",
    "FinishRun",
    "MessageSent",
    "PromiseResolved",
    "Reply",
    "RouteError",
    "RunEngine",
    "RunStarted",
    "RunStatus",
    "StartActivation",
    "activation_id",
    "batch_label",
    "decode",
    "encode",
    "entity_key",
]
