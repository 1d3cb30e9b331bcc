"""Model strings, per-agent settings, and where the endpoint and the API key come from.

A model string is ``provider/name`` (split at the first ``/``, so ``openrouter/meta/llama-3``
names ``meta/llama-3`` at OpenRouter). Every provider is reached through the OpenAI-compatible
chat completions API; the provider picks the default base URL and the environment variable that
holds its key. The endpoint and the key are resolved when a call is made, in the process that
makes it, so a worker's environment is what counts:

* base URL: ``base_url=`` > ``ROOST_LLM_BASE_URL`` > ``[tool.roost.llm] base_url`` > the
  provider's own variable (``OPENAI_BASE_URL``, ...) > the provider's default;
* API key: ``api_key=`` > the variable named by ``api_key_env=`` (or ``[tool.roost.llm]
  api_key_env``) > ``ROOST_LLM_API_KEY`` > the provider's variable (``OPENAI_API_KEY``, ...).
  Keys, and credentials in a base URL (``user:password@``, ``?api_key=``), are never stored in
  a setting's repr, the journal, logs or error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..._config import _merge, _read
from ..._redact import redact_url, url_secrets
from ...errors import ConfigError, DefinitionError, TerminalError
from ...runtime._retry import RetryPolicy


@dataclass(frozen=True)
class Provider:
    base_url: str | None
    key_env: str | None = None
    base_url_env: str | None = None
    needs_key: bool = False


PROVIDERS: dict[str, Provider] = {
    "openai": Provider("https://api.openai.com/v1", "OPENAI_API_KEY", "OPENAI_BASE_URL", needs_key=True),
    "openrouter": Provider("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", needs_key=True),
    "groq": Provider("https://api.groq.com/openai/v1", "GROQ_API_KEY", needs_key=True),
    "together": Provider("https://api.together.xyz/v1", "TOGETHER_API_KEY", needs_key=True),
    "ollama": Provider("http://127.0.0.1:11434/v1", None, "OLLAMA_BASE_URL"),
    "vllm": Provider("http://127.0.0.1:8000/v1", "VLLM_API_KEY", "VLLM_BASE_URL"),
    "llamacpp": Provider("http://127.0.0.1:8080/v1", None, "LLAMACPP_BASE_URL"),
    "lmstudio": Provider("http://127.0.0.1:1234/v1", None, "LMSTUDIO_BASE_URL"),
    "litellm": Provider("http://127.0.0.1:4000/v1", "LITELLM_API_KEY", "LITELLM_BASE_URL"),
    # Any other OpenAI-compatible server: the base URL must come from an argument, env or config.
    "compatible": Provider(None),
}
_NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")


class Secret:
    """A string that does not show itself in repr/str (an API key given in code)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class ModelSettings:
    """Per-agent settings of the LLM engine: ``.model("openai/gpt-4o-mini", temperature=0.2, ...)``.

    Its repr hides the API key and the credentials of ``base_url`` (``user:password@``,
    ``?api_key=``)."""

    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    base_url: str | None = None
    api_key: Secret | None = field(default=None, repr=False)
    api_key_env: str | None = None
    timeout: float | None = None
    """Seconds per model request (default 60, or ``[tool.roost.llm] timeout``)."""
    max_retries: int = 2
    """Answers that do not fit the output contract are asked again this many times."""
    max_turns: int = 8
    """Model turns that call tools, at most, before a final answer."""
    max_tool_errors: int = 3
    """Tool calls with invalid arguments (or unknown tools) fed back to the model, at most."""
    max_concurrency: int | None = None
    """Requests in flight per (base URL, model) in one process (default 8)."""
    strict: bool = False
    """Ask for OpenAI's strict structured outputs (the schema is made strict-compatible)."""
    output_mode: str = "json_schema"
    """How the output contract is asked for: ``json_schema`` (``response_format`` json_schema),
    ``json_object`` (``{"type": "json_object", "schema": ...}``, as llama.cpp's server takes it)
    or ``prompt`` (no response_format); the latter two also put the schema in the system message."""
    retry: RetryPolicy | None = None
    """Retry policy of model calls (default: the agent's)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra request fields passed as they are (``seed``, ``top_p``, ``reasoning_effort``...)."""

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        if self.base_url is not None:
            shown["base_url"] = redact_url(self.base_url)
        return f"ModelSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


SETTING_NAMES = tuple(f.name for f in fields(ModelSettings))
OUTPUT_MODES = ("json_schema", "json_object", "prompt")


@dataclass(frozen=True)
class ModelRef:
    provider: str
    name: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.name}"


def parse_model(spec: str, *, agent: str | None = None) -> ModelRef:
    """``"openai/gpt-4o-mini"`` -> ModelRef("openai", "gpt-4o-mini"); DefinitionError otherwise."""
    who = f"agent {agent!r}: " if agent else ""
    if not isinstance(spec, str) or "/" not in spec:
        raise DefinitionError(
            f"{who}model {spec!r} is not 'provider/name' (e.g. 'openai/gpt-4o-mini', 'ollama/llama3.2'); "
            f"providers: {', '.join(PROVIDERS)}"
        )
    provider, name = spec.split("/", 1)
    provider = provider.strip().lower()
    if not provider or not name.strip():
        raise DefinitionError(f"{who}model {spec!r} is not 'provider/name'")
    if provider not in PROVIDERS:
        raise DefinitionError(
            f"{who}unknown model provider {provider!r} in {spec!r}; known: {', '.join(PROVIDERS)} "
            "(use 'compatible/<model>' with base_url= for any other OpenAI-compatible server)"
        )
    return ModelRef(provider, name.strip())


def make_settings(agent: str, options: dict[str, Any]) -> ModelSettings:
    """Check ``.model(...)`` keyword arguments and build the settings (DefinitionError if wrong)."""
    unknown = sorted(set(options) - set(SETTING_NAMES))
    if unknown:
        raise DefinitionError(
            f"agent {agent!r}: unknown .model() setting(s) {', '.join(unknown)}; known: {', '.join(SETTING_NAMES)}"
        )
    opts = dict(options)
    if isinstance(opts.get("api_key"), str):
        opts["api_key"] = Secret(opts["api_key"])
    settings = ModelSettings(**opts)
    checks = [
        (settings.temperature is None or 0 <= settings.temperature <= 2, "temperature must be between 0 and 2"),
        (settings.max_tokens is None or settings.max_tokens > 0, "max_tokens must be positive"),
        (settings.timeout is None or settings.timeout > 0, "timeout must be positive (seconds)"),
        (settings.max_retries >= 0, "max_retries must be >= 0"),
        (settings.max_turns >= 1, "max_turns must be >= 1"),
        (settings.max_tool_errors >= 0, "max_tool_errors must be >= 0"),
        (settings.max_concurrency is None or settings.max_concurrency >= 1, "max_concurrency must be >= 1"),
        (settings.retry is None or isinstance(settings.retry, RetryPolicy), "retry must be a RetryPolicy"),
        (isinstance(settings.params, dict), "params must be a dict"),
        (settings.output_mode in OUTPUT_MODES, f"output_mode must be one of {', '.join(OUTPUT_MODES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DefinitionError(f"agent {agent!r}: .model(): {message}")
    return settings


def schema_name(name: str) -> str:
    """A response-format name the API accepts (``^[A-Za-z0-9_-]{1,64}$``)."""
    return _SCHEMA_NAME.sub("_", name)[:64] or "output"


# -- resolution at call time ---------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    base_url: str = field(repr=False)
    """As given, credentials included (the client needs them); ``shown_url`` is for people."""
    api_key: str = field(repr=False)
    timeout: float
    max_concurrency: int
    shown_url: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown_url", redact_url(self.base_url))

    @property
    def secrets(self) -> list[str]:
        """What must never appear in a message: the key and the base URL's credentials."""
        return [*([self.api_key] if self.api_key != _NO_KEY else []), *url_secrets(self.base_url)]


@lru_cache(maxsize=8)
def _file_config(root: str, env_name: str | None) -> dict[str, Any]:
    data, _source = _read(Path(root))
    llm: dict[str, Any] = dict(data.get("llm") or {})
    if env_name:
        llm = _merge(llm, (data.get("env", {}).get(env_name) or {}).get("llm") or {})
    return llm


def file_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``[tool.roost.llm]`` (and ``[tool.roost.env.<ROOST_ENV>.llm]``) of the current directory."""
    env = os.environ if environ is None else environ
    try:
        return _file_config(str(Path.cwd()), env.get("ROOST_ENV") or None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the [tool.roost.llm] settings: {exc}") from exc


def resolve_endpoint(ref: ModelRef, settings: ModelSettings, *, agent: str,
                     environ: Mapping[str, str] | None = None) -> Endpoint:
    """Base URL, key, timeout and concurrency for a call, from arguments, env and config."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    conf = file_config(env)
    provider = PROVIDERS[ref.provider]
    base_url = (settings.base_url or env.get("ROOST_LLM_BASE_URL") or conf.get("base_url")
                or (env.get(provider.base_url_env) if provider.base_url_env else None) or provider.base_url)
    if not base_url:
        raise TerminalError(
            f"agent {agent!r}: model {str(ref)!r} needs a base URL: pass base_url=..., set ROOST_LLM_BASE_URL "
            "or base_url in [tool.roost.llm]"
        )
    key_env = settings.api_key_env or conf.get("api_key_env")
    key = (settings.api_key.reveal() if settings.api_key else None) or (env.get(key_env) if key_env else None) \
        or env.get("ROOST_LLM_API_KEY") or (env.get(provider.key_env) if provider.key_env else None)
    if not key:
        official = base_url.rstrip("/") == (provider.base_url or "").rstrip("/")
        if provider.needs_key and official:
            names = " or ".join(filter(None, [key_env, "ROOST_LLM_API_KEY", provider.key_env]))
            raise TerminalError(f"agent {agent!r}: model {str(ref)!r} needs an API key: set {names}")
        key = _NO_KEY
    timeout = settings.timeout or float(env.get("ROOST_LLM_TIMEOUT") or conf.get("timeout") or 60.0)
    concurrency = settings.max_concurrency or int(env.get("ROOST_LLM_MAX_CONCURRENCY") or conf.get("max_concurrency") or 8)
    return Endpoint(str(base_url).rstrip("/"), key, float(timeout), int(concurrency))
