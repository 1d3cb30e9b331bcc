"""Calls to an OpenAI-compatible endpoint through the ``openai`` SDK (the ``llm`` extra).

The SDK is imported on first use, so ``import roost`` works without it. Its own retries are
off (``max_retries=0``): a failed call raises a roost error and the step's durable retry
policy decides: 429, 5xx, timeouts and connection errors are ``RetryableError`` (honouring
Retry-After), other 4xx are ``TerminalError`` with the provider's message. Keys are redacted
from every message built here.

Clients and concurrency limits live per event loop: an HTTP client belongs to the loop that
made it. Each loop's clients are closed when the loop shuts down its async generators (what
``asyncio.run`` does last), through a generator parked for that purpose.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..._redact import redact_text
from ...errors import MissingExtraError, RetryableError, TerminalError
from ._settings import Endpoint

log = logging.getLogger("roost.llm")


def import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise MissingExtraError("the LLM engine (agent(...).model(...))", "llm") from None
    return openai


@dataclass
class _LoopState:
    clients: dict[tuple[str, str], Any] = field(default_factory=dict)
    limits: dict[tuple[str, str], asyncio.Semaphore] = field(default_factory=dict)
    closer: Any = None


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


async def _close_at_shutdown(state: _LoopState) -> AsyncIterator[None]:
    try:
        yield
    finally:
        clients = list(state.clients.values())
        state.clients.clear()
        for client in clients:
            try:
                await client.close()
            except Exception:  # closing is best effort at shutdown
                log.debug("closing an LLM client failed", exc_info=True)


async def _loop_state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _LOOPS.get(loop)
    if state is None:
        state = _LOOPS[loop] = _LoopState()
        state.closer = _close_at_shutdown(state)
        await state.closer.__anext__()  # parked at its yield; the loop finalizes it at shutdown
    return state


async def client_for(endpoint: Endpoint) -> Any:
    state = await _loop_state()
    key = (endpoint.base_url, endpoint.api_key)
    client = state.clients.get(key)
    if client is None:
        openai = import_openai()
        client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0,
                                    timeout=endpoint.timeout)
        state.clients[key] = client
    return client


async def limit_for(endpoint: Endpoint, model: str) -> asyncio.Semaphore:
    """One semaphore per (base URL, model) in this event loop; the first caller sets its size."""
    state = await _loop_state()
    key = (endpoint.base_url, model)
    sem = state.limits.get(key)
    if sem is None:
        sem = state.limits[key] = asyncio.Semaphore(endpoint.max_concurrency)
    return sem


def redact(text: str, endpoint: Endpoint) -> str:
    """``text`` without the endpoint's key, nor the credentials of any URL in it."""
    return redact_text(text, endpoint.secrets)


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _finite(float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _finite(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _finite(secs: float) -> float | None:
    """A header's wait, or None for "nan"/"inf" (no server means to be waited on for ever)."""
    return max(0.0, secs) if math.isfinite(secs) else None


def provider_message(exc: Any) -> str:
    """The provider's own error message (``{"error": {"message": ...}}``), else the SDK's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", None) or exc)


def translate(exc: Exception, *, model: str, endpoint: Endpoint) -> Exception:
    """The roost error for an SDK exception (the caller raises it ``from None``: the SDK's
    exception holds the request, headers included). Another exception whose text would show a
    secret becomes a TerminalError with the text redacted: it comes from a setting (an invalid
    URL, say), which a retry does not fix."""
    openai = import_openai()
    where = f"model {model!r} at {endpoint.shown_url}"
    if isinstance(exc, openai.APITimeoutError):
        return RetryableError(f"{where}: no answer within {endpoint.timeout:g} s (timeout)")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(redact(f"{where}: connection failed: {exc}", endpoint))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = redact(provider_message(exc), endpoint)[:2000]
        text = f"{where}: HTTP {status}: {message}"
        if status in (408, 409, 429) or status >= 500:
            return RetryableError(text, retry_after=retry_after(exc.response.headers))
        return TerminalError(text)
    if isinstance(exc, openai.APIResponseValidationError | openai.APIError):
        return RetryableError(redact(f"{where}: bad response: {exc}", endpoint))
    text = str(exc)
    if redact(text, endpoint) != text:
        return TerminalError(f"{where}: {type(exc).__name__}: {redact(text, endpoint)}")
    return exc
