"""Config -> ChatCompletionClient: one function per provider, and errors a person can read.

Every provider, the embedded local model included, goes through an
OpenAI-compatible client, so streaming, retries and timeouts behave the same.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from autogen_core.models import ChatCompletionClient, ModelFamily, ModelInfo

from .config import ConfigError, LocalModelConfig, ModelConfig
from .scripted import ScriptedChatCompletionClient
from .texttools import TextToolCalls

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
#: Set by `roundtable up` for its children: a file saying why the model server is down, if it is.
MODEL_STATE_ENV = "ROUNDTABLE_MODEL_STATE"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"

# What an unknown model behind an OpenAI-compatible server can be assumed to do. Tool calls
# are allowed through: AutoGen refuses tools up front otherwise, and a server that cannot do
# them answers with an error the conversation shows.
PLAIN_MODEL_INFO = ModelInfo(
    vision=False,
    function_calling=True,
    json_output=False,
    family=ModelFamily.UNKNOWN,
    structured_output=False,
)


def _sampling(cfg: ModelConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"timeout": cfg.timeout, "max_retries": cfg.max_retries}
    for key in ("temperature", "top_p", "max_tokens", "stop"):
        value = getattr(cfg, key)
        if value is not None:
            args[key] = value
    return args


def _known_or_plain(make: Callable[..., ChatCompletionClient], **kwargs: Any) -> ChatCompletionClient:
    """AutoGen's client knows OpenAI's own models by name; any other gets a plain, capability-free
    info (AutoGen's client refuses to be made for a name it does not know without one)."""
    try:
        return make(**kwargs)
    except ValueError as error:
        if "model_info" not in str(error):
            raise
        return make(**kwargs, model_info=PLAIN_MODEL_INFO)


def _openai_client(**kwargs: Any) -> ChatCompletionClient:
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    return _known_or_plain(OpenAIChatCompletionClient, **kwargs)


def local_client(cfg: ModelConfig, local: LocalModelConfig) -> ChatCompletionClient:
    # llama.cpp's server defaults differ from the library's (repeat_penalty 1.1 vs 1.0),
    # so sampling options are always sent explicitly.
    extra_body = {"repeat_penalty": cfg.repeat_penalty if cfg.repeat_penalty is not None else 1.0}
    args = _sampling(cfg)
    args.setdefault("temperature", 0.7)
    # llama-cpp-python's server cannot stream tool calls, so the model writes them as text.
    return TextToolCalls(
        _openai_client(
            model=cfg.model or "local",
            base_url=cfg.base_url or local.base_url,
            api_key="not-needed",
            extra_body=extra_body,
            **args,
        )
    )


def openai_client(cfg: ModelConfig, local: LocalModelConfig) -> ChatCompletionClient:
    key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError("provider 'openai' needs an API key: pass --openai-api-key or set OPENAI_API_KEY")
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
    kwargs: dict[str, Any] = {"model": cfg.model or DEFAULT_OPENAI_MODEL, "api_key": key, **_sampling(cfg)}
    if base_url:
        kwargs["base_url"] = base_url
    return _openai_client(**kwargs)


def compatible_client(cfg: ModelConfig, local: LocalModelConfig) -> ChatCompletionClient:
    key = cfg.api_key.get_secret_value() if cfg.api_key else "not-needed"
    assert cfg.model and cfg.base_url  # checked by the config
    extra: dict[str, Any] = {}
    if cfg.repeat_penalty is not None:
        extra["extra_body"] = {"repeat_penalty": cfg.repeat_penalty}
    return _openai_client(model=cfg.model, base_url=cfg.base_url, api_key=key, **_sampling(cfg), **extra)


def azure_client(cfg: ModelConfig, local: LocalModelConfig) -> ChatCompletionClient:
    from autogen_ext.models.openai import AzureOpenAIChatCompletionClient

    model = cfg.model or "gpt-4o"
    auth: dict[str, Any]
    key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("AZURE_OPENAI_API_KEY")
    if key:
        auth = {"api_key": key}
    else:
        # Entra ID: whatever DefaultAzureCredential finds (az login, managed identity, ...).
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider

        auth = {"azure_ad_token_provider": get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)}
    kwargs: dict[str, Any] = {
        "model": model,
        "azure_endpoint": cfg.azure_endpoint,
        "azure_deployment": cfg.azure_deployment,
        "api_version": cfg.api_version,
        **auth,
        **_sampling(cfg),
    }
    return _known_or_plain(AzureOpenAIChatCompletionClient, **kwargs)


def scripted_client(cfg: ModelConfig, local: LocalModelConfig) -> ChatCompletionClient:
    return ScriptedChatCompletionClient(
        cfg.script or ["(scripted reply {n})"],
        name=cfg.model or "scripted",
        token_delay=cfg.token_delay,
        record=cfg.record,
        max_tokens=cfg.max_tokens,
        cpu_ms=cfg.cpu_ms,
    )


FACTORIES: dict[str, Callable[[ModelConfig, LocalModelConfig], ChatCompletionClient]] = {
    "local": local_client,
    "openai": openai_client,
    "openai-compatible": compatible_client,
    "azure": azure_client,
    "scripted": scripted_client,
}


def build_client(cfg: ModelConfig, local: LocalModelConfig | None = None) -> ChatCompletionClient:
    return FACTORIES[cfg.provider](cfg, local or LocalModelConfig())


def _openai_errors() -> Any:
    """The openai package, if a client has loaded it; its errors cannot happen otherwise. Importing
    it takes about a second, which a manager or a scripted agent need not spend at every start."""
    return sys.modules.get("openai")


class ExplainedError(Exception):
    """A model's (or a remote agent's) failure whose message already says it all, in one line."""


def describe_model_error(error: BaseException) -> str:
    """One line saying what went wrong with the model, without secrets or a traceback."""
    if isinstance(error, ExplainedError):
        return str(error)
    openai = _openai_errors()
    if openai is None:
        return _plain_model_error(error)
    if isinstance(error, openai.AuthenticationError):
        return "the model server rejected the API key (401): check the key"
    if isinstance(error, openai.PermissionDeniedError):
        return "the model server refused access (403): check the key's permissions"
    if isinstance(error, openai.NotFoundError):
        return "the model server does not know this model or deployment (404): check the model name"
    if isinstance(error, openai.RateLimitError):
        return "the model server kept rate-limiting (429) after retries"
    if isinstance(error, openai.APITimeoutError):
        return "the model server did not answer in time"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach the model server: {_known_model_state() or 'is it running, and is the URL right?'}"
    if isinstance(error, openai.APIStatusError):
        return f"the model server answered with HTTP {error.status_code}"
    return _plain_model_error(error)


def _plain_model_error(error: BaseException) -> str:
    return f"the model failed: {type(error).__name__}: {error}".splitlines()[0]


async def explain_model_error(error: BaseException, wait: float = 3.0) -> str:
    """describe_model_error, but when the model server could not be reached and `roundtable up`
    runs it, first give up a moment (bounded by `wait`) to learn why: a crash is only known to
    `up` a fraction of a second after the connection broke."""
    openai = _openai_errors()
    if openai and isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError):
        if os.environ.get(MODEL_STATE_ENV):
            deadline = asyncio.get_running_loop().time() + wait
            while not _known_model_state() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
    return describe_model_error(error)


def _known_model_state() -> str:
    """What `roundtable up` knows of the model server it runs: why it is down, or ''."""
    path = os.environ.get(MODEL_STATE_ENV)
    if not path:
        return ""
    try:
        with open(path) as state:
            return state.read().strip()
    except OSError:
        return ""
