"""LLMEngine: an agent whose output comes from a model, with tools, as durable steps.

``run`` is orchestration code, replayed after a crash: every model call is the step
``model call <n>`` (``self.complete(messages)``) and every tool call the step
``tool <name>`` (``self.call_tool(name, arguments)``). Both are bound methods of this engine
taking and returning plain JSON, so a backend may run them in another process (a Temporal
activity finds the engine through the app's agent). What the model answered is journaled, so
nothing answered is asked again, and no tool whose result is journaled runs again.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pydantic
import pydantic_core

from ... import _tracing
from ..._codec import type_name
from ...errors import ContractViolationError, DefinitionError, TerminalError
from .._base import Engine
from ._client import client_for, import_openai, limit_for, translate
from ._schema import OutputSchema, failing_fields, field_errors
from ._settings import ModelSettings, make_settings, parse_model, resolve_endpoint
from ._tools import Tool, as_tool

if TYPE_CHECKING:
    from ..._graph import AgentSpec
    from ...runtime import DurableContext

log = logging.getLogger("roost.llm")

Message = dict[str, Any]


class LLMEngine(Engine):
    """``agent(name).contracts(input=A, output=B).model("provider/name", **settings)``.

    One engine serves one agent. Settings: see ``ModelSettings``; ``prompt=fn`` renders the
    user message from the inputs (default: each input as JSON under its type's name)."""

    awaits_promises = False  # model calls and tools are steps; neither gets ctx

    def __init__(self, model: str, *, agent: str, tools: Sequence[Tool | Callable[..., Any]] = (),
                 prompt: Callable[..., str] | None = None, **settings: Any) -> None:
        import_openai()  # a missing extra fails when the agent is declared, with the pip command
        self.agent = agent
        self.ref = parse_model(model, agent=agent)
        self.settings: ModelSettings = make_settings(agent, settings)
        self.prompt = prompt
        self.tools: dict[str, Tool] = {}
        self.add_tools(tools)
        self._output: OutputSchema | None = None

    def __repr__(self) -> str:
        return f"LLMEngine({str(self.ref)!r}, agent={self.agent!r}, tools={list(self.tools)})"

    def add_tools(self, tools: Sequence[Tool | Callable[..., Any]]) -> None:
        for t in map(as_tool, tools):
            if t.name in self.tools and self.tools[t.name] is not t:
                raise DefinitionError(f"agent {self.agent!r}: two tools are named {t.name!r}")
            self.tools[t.name] = t

    # -- definition -------------------------------------------------------------------------

    def check(self, spec: AgentSpec) -> None:
        if spec.name != self.agent:
            raise DefinitionError(
                f"agent {spec.name!r} uses the LLM engine of agent {self.agent!r}; an LLMEngine serves one agent "
                "(call .model(...) on each)"
            )
        self._output = OutputSchema.of(spec.output_type, agent=spec.name)

    @property
    def output(self) -> OutputSchema:
        if self._output is None:
            raise RuntimeError(f"agent {self.agent!r}: the LLM engine is used before its App was built")
        return self._output

    # -- orchestration (replayed) ---------------------------------------------------------------

    async def run(self, ctx: DurableContext, spec: AgentSpec, args: tuple[Any, ...]) -> Any:
        s = self.settings
        messages = self.first_messages(args)
        calls = turns = invalid = tool_errors = 0
        model_retry = s.retry or spec.retry
        while True:
            calls += 1
            reply: dict[str, Any] = await ctx.step(f"model call {calls}", self.complete, list(messages),
                                                   retry=model_retry)
            tool_calls = reply.get("tool_calls") or []
            messages.append(_assistant(reply))
            if tool_calls:
                turns += 1
                if turns > s.max_turns:
                    raise TerminalError(
                        f"run {ctx.run_id!r}: agent {self.agent!r}: the model kept calling tools for {s.max_turns} "
                        f"turn(s) without a final answer (max_turns={s.max_turns}; raise it with .model(..., "
                        "max_turns=N))"
                    )
                for call in tool_calls:
                    content, error = await self._tool_turn(ctx, spec, call)
                    if error is not None:
                        tool_errors += 1
                        if tool_errors > s.max_tool_errors:
                            raise ContractViolationError(
                                f"run {ctx.run_id!r}: agent {self.agent!r}: the model called tools wrongly "
                                f"{tool_errors} time(s) (max_tool_errors={s.max_tool_errors}); last: {error}"
                            )
                    messages.append({"role": "tool", "tool_call_id": call.get("id") or "", "content": content})
                continue
            try:
                return self.output.parse(reply.get("content"))
            except pydantic.ValidationError as exc:
                invalid += 1
                if invalid > s.max_retries:
                    raise ContractViolationError(
                        f"run {ctx.run_id!r}: agent {self.agent!r}: the model's answer does not fit the output "
                        f"contract {type_name(spec.output_type)} after {invalid} attempt(s) "
                        f"(max_retries={s.max_retries}); failing field(s) {', '.join(failing_fields(exc))}: "
                        f"{field_errors(exc)}"
                    ) from None
                messages.append({"role": "user", "content": (
                    f"Your answer does not fit the required {self.output.name} schema: {field_errors(exc)}. "
                    + self._instruction())})

    async def _tool_turn(self, ctx: DurableContext, spec: AgentSpec, call: dict[str, Any]) -> tuple[str, str | None]:
        """The tool message's content, and the error fed back instead of a call (if any)."""
        name = str(call.get("name") or "")
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            error = f"there is no tool named {name!r} (tools: {known})"
            return f"Error: {error}.", error
        try:
            arguments = json.loads(call.get("arguments") or "{}")
            tool.validate(arguments)
        except (ValueError, pydantic.ValidationError) as exc:
            detail = field_errors(exc) if isinstance(exc, pydantic.ValidationError) else f"not JSON ({exc})"
            error = f"invalid arguments for tool {name!r}: {detail}"
            return f"Error: {error}. Call it again with arguments that fit its schema.", error
        content: str = await ctx.step(f"tool {name}", self.call_tool, name, arguments,
                                      retry=tool.retry or spec.retry)
        return content, None

    def first_messages(self, args: tuple[Any, ...]) -> list[Message]:
        system = "\n\n".join(filter(None, [self.settings.system, self._instruction()]))
        user = self.prompt(*args) if self.prompt is not None else render_inputs(args)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _instruction(self) -> str:
        return self.output.instruction(with_schema=self.settings.output_mode != "json_schema")

    # -- steps (may run in another process: plain JSON in and out) --------------------------------

    async def complete(self, messages: list[Message]) -> dict[str, Any]:
        """One chat completion: ``{"content", "tool_calls": [{"id", "name", "arguments"}],
        "finish_reason", "usage"}``."""
        s = self.settings
        endpoint = resolve_endpoint(self.ref, s, agent=self.agent)
        body: dict[str, Any] = {"model": self.ref.name, "messages": messages}
        response_format = self.output.response_format(strict=s.strict, mode=s.output_mode)
        if response_format is not None:
            body["response_format"] = response_format
        if self.tools:
            body["tools"] = [t.spec(strict=s.strict) for t in self.tools.values()]
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        body.update(s.params)
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.ref.provider,
                 "gen_ai.request.model": self.ref.name, "gen_ai.agent.name": self.agent,
                 "gen_ai.request.temperature": s.temperature, "gen_ai.request.max_tokens": s.max_tokens,
                 "server.address": urllib.parse.urlsplit(endpoint.shown_url).hostname}
        with _tracing.call_span(f"chat {self.ref.name}", attrs) as span:
            try:  # making the client can fail on the base URL too: its error goes through translate
                client = await client_for(endpoint)
                async with await limit_for(endpoint, self.ref.name):
                    log.debug("agent %s: model call to %s at %s", self.agent, self.ref.name, endpoint.shown_url)
                    response = await client.chat.completions.create(**body, timeout=endpoint.timeout)
            except Exception as exc:
                err = translate(exc, model=str(self.ref), endpoint=endpoint)
                if err is exc:
                    raise
                log.debug("agent %s: %s", self.agent, err)
                raise err from None
            reply = _reply(response)
            span.update(usage_attributes(reply, getattr(response, "model", None)))
        return reply

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """Run tool ``name``; its result as the text the model reads."""
        tool = self.tools.get(name)
        if tool is None:
            raise TerminalError(f"agent {self.agent!r} has no tool named {name!r}")
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.agent.name": self.agent}
        try:
            with _tracing.call_span(f"execute_tool {name}", attrs, kind="INTERNAL"):
                return await tool.invoke(arguments)
        except pydantic.ValidationError as exc:  # checked before the step; only if the tool changed
            return f"Error: invalid arguments for tool {name!r}: {field_errors(exc)}."


def render_inputs(args: tuple[Any, ...]) -> str:
    """Each input as JSON under its type's name (several when the agent converges)."""
    blocks = []
    for value in args:
        text = value if isinstance(value, str) else pydantic_core.to_json(value, indent=2).decode()
        label = type(value).__name__ if not isinstance(value, list) else (
            f"list[{type(value[0]).__name__}]" if value else "list")
        blocks.append(f"{label}:\n{text}")
    return "\n\n".join(blocks)


def usage_attributes(reply: dict[str, Any], model: Any) -> dict[str, Any]:
    """The GenAI semantic-convention attributes of a completion: token usage when the provider
    reports it, the model that answered, why it stopped."""
    usage = reply.get("usage") or {}
    attrs: dict[str, Any] = {"gen_ai.response.model": model if isinstance(model, str) else None}
    if isinstance(usage.get("prompt_tokens"), int):
        attrs["gen_ai.usage.input_tokens"] = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        attrs["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
    if reply.get("finish_reason"):
        attrs["gen_ai.response.finish_reasons"] = [str(reply["finish_reason"])]
    return attrs


def _assistant(reply: dict[str, Any]) -> Message:
    message: Message = {"role": "assistant", "content": reply.get("content") or ""}
    if reply.get("tool_calls"):
        message["tool_calls"] = [
            {"id": c.get("id") or "", "type": "function", "function": {"name": c.get("name") or "",
                                                                      "arguments": c.get("arguments") or "{}"}}
            for c in reply["tool_calls"]
        ]
    return message


def _reply(response: Any) -> dict[str, Any]:
    """The journaled form of a chat completion (plain JSON)."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        return {"content": None, "tool_calls": [], "finish_reason": None, "usage": None}
    choice = choices[0]
    message = choice.message
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in (getattr(message, "tool_calls", None) or []) if getattr(c, "function", None) is not None
    ]
    usage = getattr(response, "usage", None)
    return {
        "content": message.content if message.content is not None else getattr(message, "refusal", None),
        "tool_calls": calls,
        "finish_reason": choice.finish_reason,
        "usage": usage.model_dump(mode="json", exclude_none=True) if usage is not None else None,
    }
