"""What the engine-backed runtimes that run a whole run in one invocation (Restate's run
workflow, Temporal's) share: the limit on activations executing at once, and the outcome of an
activation whatever stopped it."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

from .._engine import Activation, ActivationFinished, failed_activation
from ._base import RunAborted


class Slots:
    """At most ``limit`` activations execute at once; more wait in order. One that waits (on a
    timer, a promise or a reply) gives its slot back meanwhile (``pause``), and takes one again
    when it goes on, even past the limit: it must not wait behind new work."""

    def __init__(self, limit: int, start: Callable[[Activation], None]) -> None:
        self.limit = limit
        self.running = 0
        self.queue: collections.deque[Activation] = collections.deque()
        self._start = start

    def admit(self, spec: Activation) -> None:
        if self.running >= self.limit:
            self.queue.append(spec)
            return
        self.running += 1
        self._start(spec)

    def release(self) -> None:
        """An activation ended (or started waiting): the next in line starts."""
        self.running -= 1
        while self.queue and self.running < self.limit:
            self.admit(self.queue.popleft())

    def pause(self, on: bool) -> None:
        if on:
            self.release()
        else:
            self.running += 1

    def drop(self, ids: set[str]) -> list[Activation]:
        """Take the activations of ``ids`` out of the queue (aborted before they started)."""
        dropped = [spec for spec in self.queue if spec.id in ids]
        if dropped:
            self.queue = collections.deque(spec for spec in self.queue if spec.id not in ids)
        return dropped


async def outcome(spec: Activation, run: Awaitable[ActivationFinished], slots: Slots) -> ActivationFinished:
    """The activation's outcome, whatever ended it, and its slot given back: aborted, it is
    ``cancelled``; a failure of roost's own code around it fails it, naming the cause (the run
    learns why, never a silent stop)."""
    try:
        return await run
    except RunAborted:
        return ActivationFinished(spec.id, "cancelled")
    except Exception as exc:
        return failed_activation(spec, None, 1, exc)
    finally:
        slots.release()
