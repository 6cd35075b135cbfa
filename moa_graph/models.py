"""Model specs: turn ``"provider:model"`` strings, chat models and ``ProposerSpec`` into models.

A model is given as a ``BaseChatModel`` instance, a ``"provider:model"`` string (any provider that
``init_chat_model`` knows, plus ``local:<name>`` for the embedded models), or a
``ProposerSpec`` that adds per-model settings. Sampling defaults (temperature, max_tokens, ...)
apply to models built from strings; an instance is used as configured unless its spec sets a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, TypeAlias

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.runnables import Runnable, RunnableBinding
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from moa_graph.backend import Continuation, traits_of
from moa_graph.call_policy import CallPolicy
from moa_graph.settings import DEFAULTS, MixtureSettings

ChatRunnable: TypeAlias = Runnable[LanguageModelInput, BaseMessage]
LOCAL_PROVIDER = "local"
CONTINUATION_ATTRIBUTE = "moa_continuation"
"""A chat model class may declare its ``Continuation`` in this attribute (``ChatLocalModel``
does)."""
SAMPLES_IN_ONE_REQUEST_ATTRIBUTE = "moa_samples_in_one_request"
"""A chat model class that draws ``n`` answers in one request declares it here
(``ChatLocalModel`` does)."""
CHEAP_LOGPROBS_ATTRIBUTE = "moa_cheap_logprobs"
"""A chat model class whose token log-probabilities cost next to nothing declares it here: a
``vote`` then records each answer's confidence too (``ChatLocalModel`` does)."""
MAX_SAMPLES_PER_REQUEST_ATTRIBUTE = "moa_max_samples_per_request"
"""A chat model that draws ``n`` answers in one request but only up to a limit gives the limit
here (``ChatLocalModel``: its ``slots``); a model sampled more often draws its samples in as
many requests as it takes, each up to the limit."""
TAKES_TURNS_ATTRIBUTE = "moa_takes_turns"
"""A chat model class whose generations take turns on shared cores says so here: a staircase
then writes with it one chunk a call (``ChatLocalModel`` does)."""


class ProposerSpec(BaseModel):
    """A model plus the settings of one proposer (or of the aggregator).

    Attributes:
        model: a chat model instance or a ``"provider:model"`` string.
        name: display name in proposals, progress events and traces (default: the model name).
        temperature: sampling temperature for this model.
        max_tokens: answer length limit for this model.
        system_prompt: a system prompt this proposer sees before the conversation.
        samples: how many times this model is sampled in a layer (Self-MoA uses n > 1).
        base_url: endpoint of an OpenAI-compatible server (vLLM, Ollama, llama.cpp, ...).
        api_key: key for that endpoint; held as a secret, never printed.
        timeout: seconds one call of this model may take (default: the mixture's ``timeout``).
        max_retries: retries of transient errors for this model (default: the mixture's).
        model_kwargs: any further keyword arguments for the model's constructor.
        continuation: how the model continues a partial answer of its own, which staircase
            streaming needs of every model that reads references: ``"prefill"`` (its server
            continues a final assistant message as it is: llama.cpp, the embedded models) or
            ``"vllm"`` (vLLM's ``continue_final_message``). Default: ``"prefill"`` for the
            embedded models, otherwise unknown (a staircase refuses the model).
        samples_in_one_request: draw the ``samples`` of this model in one request (``n``), the
            prompt read once: on for the embedded models; say ``True`` for an OpenAI-compatible
            server that honours ``n`` (OpenAI, vLLM), ``False`` to make one request a sample.

    Example:
        >>> spec = ProposerSpec(model="openai:llama3.1", base_url="http://localhost:11434/v1",
        ...                     api_key="ollama", temperature=0.2, samples=3)
        >>> spec.samples, spec.api_key
        (3, SecretStr('**********'))
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    model: BaseChatModel | str
    name: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    system_prompt: str | None = None
    samples: int = Field(default=1, ge=1, le=64)
    base_url: str | None = None
    api_key: SecretStr | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=20)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    continuation: Continuation | None = None
    samples_in_one_request: bool | None = None

    @field_validator("model")
    @classmethod
    def _model_string_not_blank(cls, value: BaseChatModel | str) -> BaseChatModel | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("model must not be an empty string")
        return value

    @field_validator("name", "system_prompt")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty or only white space")
        return value


ModelLike: TypeAlias = BaseChatModel | str | ProposerSpec | Mapping[str, Any]
"""Anything accepted where a model is expected."""


@dataclass(frozen=True)
class ResolvedModel:
    """A ready chat model with its display name, model label and optional system prompt."""

    name: str
    model_name: str
    model: ChatRunnable
    system_prompt: str | None
    samples: int
    policy: CallPolicy
    secret: str | None = dataclass_field(default=None, repr=False)
    continuation: Continuation | None = None
    max_tokens: int | None = None
    """The model's answer budget, where known (staircase rounds share it)."""
    takes_turns: bool = False
    """Its generations take turns on shared cores (see ``TAKES_TURNS_ATTRIBUTE``)."""
    samples_in_one_request: bool = False
    """Its samples are drawn in one request (see ``ProposerSpec.samples_in_one_request``)."""
    samples_per_request: int | None = None
    """At most this many of its samples in one request (``None``: no limit)."""


def to_spec(value: ModelLike, *, field: str) -> ProposerSpec:
    """Normalise any accepted model form to a ``ProposerSpec``; errors name ``field``.

    Example:
        >>> to_spec("openai:gpt-4o", field="aggregator").model
        'openai:gpt-4o'
    """
    if isinstance(value, ProposerSpec):
        return value
    if isinstance(value, BaseChatModel | str):
        return _validated(field, model=value)
    if isinstance(value, Mapping):
        return _validated(field, **value)
    raise ValueError(
        f"{field}: expected a chat model, a 'provider:model' string or a ProposerSpec, "
        f"got {type(value).__name__}"
    )


def _validated(field: str, **kwargs: Any) -> ProposerSpec:
    try:
        return ProposerSpec(**kwargs)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{field}: {exc}") from None


def resolve_model(
    value: ModelLike,
    *,
    field: str,
    defaults: MixtureSettings = DEFAULTS,
    rate_limiters: Mapping[str, BaseRateLimiter] | None = None,
) -> ResolvedModel:
    """Build the chat model a spec describes, with ``defaults`` where the spec is silent.

    Of ``defaults`` (the mixture's settings), ``temperature`` and ``max_tokens`` apply to models
    built from strings; ``timeout`` (seconds per call) and ``max_retries`` to every call of the
    model (models built from strings also get ``timeout`` as their HTTP timeout and make no
    retries of their own); ``rate_limiters`` maps a provider to the limiter its string-built
    models share.

    Raises:
        ValueError: naming ``field`` when the provider is unknown, its package is missing, or
            the model cannot be created (for example a missing API key).
    """
    spec = to_spec(value, field=field)
    model_name = model_label(spec.model)
    policy = CallPolicy(
        timeout=_first(spec.timeout, defaults.timeout),
        max_retries=_first(spec.max_retries, defaults.max_retries),
    )
    if isinstance(spec.model, BaseChatModel):
        model = _bind_explicit_settings(spec)
    else:
        model = _build_from_string(
            spec, field=field, defaults=defaults, policy=policy, rate_limiters=rate_limiters or {}
        )
    traits = traits_of(model)
    return ResolvedModel(
        name=spec.name or model_name,
        model_name=model_name,
        model=model,
        system_prompt=spec.system_prompt,
        samples=spec.samples,
        policy=policy,
        secret=spec.api_key.get_secret_value() if spec.api_key else None,
        continuation=spec.continuation or traits.continuation,
        takes_turns=traits.takes_turns,
        samples_in_one_request=spec.samples > 1
        and _first(spec.samples_in_one_request, traits.samples_in_one_request),
        samples_per_request=traits.max_samples_per_request,
        max_tokens=_first(
            spec.max_tokens,
            getattr(spec.model, "max_tokens", None)
            if isinstance(spec.model, BaseChatModel)
            else defaults.max_tokens,
        ),
    )


def unbound(model: ChatRunnable) -> tuple[ChatRunnable, dict[str, Any]]:
    """What ``model``'s bindings wrap, and the call arguments they bind (the outer binding's
    win).

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> fake = GenericFakeChatModel(messages=iter([]))
        >>> inner, kwargs = unbound(fake.bind(seed=1).bind(seed=2, n=3))
        >>> inner is fake, kwargs
        (True, {'seed': 2, 'n': 3})
    """
    kwargs: dict[str, Any] = {}
    while isinstance(model, RunnableBinding):
        kwargs = {**model.kwargs, **kwargs}
        model = model.bound
    return model, kwargs


def chat_model_under(model: ChatRunnable) -> BaseChatModel | None:
    """The chat model under ``model``'s bindings (``None`` when something else wraps it)."""
    inner = unbound(model)[0]
    return inner if isinstance(inner, BaseChatModel) else None


def declared(model: ChatRunnable, attribute: str) -> Any:
    """What a chat model class declares in ``attribute`` (under any binding), if anything.

    The engine reads ``moa_graph.backend.traits_of`` instead (the ``LocalBackend`` protocol,
    which still honours these attributes)."""
    return getattr(unbound(model)[0], attribute, None)


def _bind_explicit_settings(spec: ProposerSpec) -> ChatRunnable:
    assert isinstance(spec.model, BaseChatModel)
    settings = {
        key: value
        for key, value in {"temperature": spec.temperature, "max_tokens": spec.max_tokens}.items()
        if value is not None
    }
    return spec.model.bind(**settings) if settings else spec.model


def _build_from_string(
    spec: ProposerSpec,
    *,
    field: str,
    defaults: MixtureSettings,
    policy: CallPolicy,
    rate_limiters: Mapping[str, BaseRateLimiter],
) -> BaseChatModel:
    assert isinstance(spec.model, str)
    provider, model = split_provider(spec.model, field=field)
    settings: dict[str, Any] = {
        "temperature": _first(spec.temperature, defaults.temperature),
        "max_tokens": _first(spec.max_tokens, defaults.max_tokens),
        # the client's own timeout is a backstop a little after the mixture's deadline: were
        # they equal, the client's could fire first under load and be retried as a transient
        # error, where the deadline reports the call timed out and does not retry it
        "timeout": None if policy.timeout is None else policy.timeout + CLIENT_TIMEOUT_MARGIN_S,
        "max_retries": 0,  # the mixture retries, with its own backoff and Retry-After handling
        "base_url": spec.base_url,
        "api_key": spec.api_key,
        "rate_limiter": rate_limiters.get(provider or ""),
    }
    kwargs = {key: value for key, value in settings.items() if value is not None}
    kwargs.update(spec.model_kwargs)
    _check_api_key(provider, kwargs, field=field, model=spec.model)
    try:
        if provider == LOCAL_PROVIDER:
            from moa_graph.local import create_local_chat_model

            for remote_only in ("timeout", "max_retries", "base_url", "api_key", "rate_limiter"):
                kwargs.pop(remote_only, None)
            return create_local_chat_model(model, **kwargs)
        from langchain.chat_models import init_chat_model

        chat_model = init_chat_model(model, model_provider=provider, **kwargs)
    except Exception as exc:
        raise ValueError(f"{field}: cannot create chat model {spec.model!r}: {exc}") from exc
    if getattr(chat_model, "stream_usage", True) is None:
        # OpenAI-compatible clients (Together, vLLM, ...) then report usage when streaming too,
        # so a streamed mixture can sum the tokens of every call.
        chat_model.stream_usage = True
    return chat_model


CLIENT_TIMEOUT_MARGIN_S = 5.0
"""How much later than the mixture's per-call deadline a provider client built from a string gives
up by itself."""


API_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "together": "TOGETHER_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistralai": "MISTRAL_API_KEY",
    "fireworks": "FIREWORKS_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY",
    "google_genai": "GOOGLE_API_KEY",
    "cohere": "COHERE_API_KEY",
}
"""The environment variable each provider's LangChain integration reads its key from."""


def _check_api_key(
    provider: str | None, kwargs: Mapping[str, Any], *, field: str, model: str
) -> None:
    """Name the provider's own key variable when it is missing (some integrations built on the
    OpenAI client would ask for ``OPENAI_API_KEY`` instead), before any model is built."""
    variable = API_KEY_VARIABLES.get(provider or "")
    if variable is None or os.environ.get(variable):
        return
    if any(kwargs.get(key) for key in ("api_key", f"{provider}_api_key")):
        return
    raise ValueError(
        f"{field}: cannot create chat model {model!r}: no API key; set {variable} in the "
        "environment or give ProposerSpec(api_key=...)"
    )


def split_provider(spec: str, *, field: str) -> tuple[str | None, str]:
    """Split ``"provider:model"``; an unknown provider prefix is a ``ValueError`` naming ``field``.

    A string without a provider prefix is returned as ``(None, spec)`` so that
    ``init_chat_model`` may infer the provider (``"gpt-4o"`` -> OpenAI).

    Example:
        >>> split_provider("together:Qwen/Qwen2.5-72B-Instruct-Turbo", field="proposers[0]")
        ('together', 'Qwen/Qwen2.5-72B-Instruct-Turbo')
    """
    prefix, sep, rest = spec.partition(":")
    if not sep:
        return None, spec
    known = known_providers()
    if prefix in known:
        if not rest.strip():
            raise ValueError(f"{field}: {spec!r} names no model after '{prefix}:'")
        return prefix, rest
    raise ValueError(
        f"{field}: unknown provider {prefix!r} in {spec!r}; known providers: "
        + ", ".join(sorted(known))
    )


def known_providers() -> set[str]:
    """Providers accepted in ``"provider:model"`` strings."""
    try:  # init_chat_model's own provider table: LangChain exports no public list of it
        from langchain.chat_models.base import _BUILTIN_PROVIDERS
    except ImportError:  # pragma: no cover - older or newer langchain layouts
        return {"openai", "together", LOCAL_PROVIDER}
    return {*_BUILTIN_PROVIDERS, LOCAL_PROVIDER}


def model_label(model: BaseChatModel | str) -> str:
    """A short human-readable model name: the id after the provider prefix, or the instance's.

    Example:
        >>> model_label("together:Qwen/Qwen2.5-72B-Instruct-Turbo")
        'Qwen/Qwen2.5-72B-Instruct-Turbo'
    """
    if isinstance(model, str):
        return model.partition(":")[2] or model
    for attribute in ("model_name", "model", "model_id", "repo_id"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def missing_local_models(names: list[str]) -> list[str]:
    """The embedded models among ``names`` that are not installed on this machine (cheap: no
    file is read). Unknown names are left to model construction, which names the field.

    Example:
        >>> missing_local_models(["smollm2-135m"])   # installed with the tests
        []
    """
    from moa_graph.local.weights import (
        LocalModelSpec,
        ModelNotInstalledError,
        check_installed,
        resolve_model,
    )

    missing = []
    for name in names:
        try:
            resolved = resolve_model(name)
            if isinstance(resolved, LocalModelSpec):
                check_installed(resolved)
        except ModelNotInstalledError:
            missing.append(name)
        except ValueError:
            continue
    return missing
