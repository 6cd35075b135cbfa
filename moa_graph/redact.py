"""Keep secrets out of error messages, logs, traces and stored state."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.tracers.base import BaseTracer
from pydantic import SecretStr

MASK = "**********"
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|tgp|gsk|xai|key)[-_][A-Za-z0-9_\-]{12,}\b")


def known_secrets(extra: Iterable[str] = ()) -> list[str]:
    """Secret values to mask: API keys from the environment plus ``extra``."""
    values = {value for name, value in os.environ.items() if _SECRET_ENV.search(name)}
    values.update(extra)
    return sorted((v for v in values if len(v) >= 8), key=len, reverse=True)


_TOKEN = re.compile(r"[\w\-*\u2022\u2026]+")
"""A run of characters a key, or a key as a provider masks it, is written with."""
_MASK_RUN = re.compile(r"\*{2,}|\u2022+|\u2026")
"""How providers hide the middle of a key they echo: ``sk-plan****3456``, ``sk-…3456``."""
_MASKED_KEY = re.compile(r"\b(sk|pk|rk|tgp|gsk|xai|key)[-_][\w\-]*(\*{2,}|\u2022+|\u2026)[\w\-]*")
"""An unknown key echoed masked (a provider's whole key is never known to be safe to show)."""


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Mask every known secret and anything shaped like an API key in ``text``.

    A known secret is masked whole, as providers echo it masked (its first and last characters
    around stars: OpenAI's ``Incorrect API key provided: sk-plan************3456.``), and as a
    prefix (6 characters or more), a suffix (4 or more) or any other piece of 8 characters or
    more of it.

    Example:
        >>> redact("Incorrect API key provided: sk-abc123def456ghi789")
        'Incorrect API key provided: **********'
        >>> key = "sk-plan-0123456789abcdef3456"
        >>> redact("Incorrect API key provided: sk-plan************3456.", [key])
        'Incorrect API key provided: **********.'
        >>> redact("the key starting sk-plan-01 and ending 3456", [key])
        'the key starting ********** and ending **********'
    """
    secrets = known_secrets(extra)
    for secret in secrets:
        text = text.replace(secret, MASK)
    if secrets:
        text = _TOKEN.sub(lambda match: _masked_token(match.group(), secrets), text)
    text = _MASKED_KEY.sub(MASK, text)
    return _KEY_LIKE.sub(MASK, text)


def _masked_token(token: str, secrets: list[str]) -> str:
    """``token``, or :data:`MASK` if it gives away part of one of ``secrets``."""
    if token == MASK:
        return token
    pieces = [piece for piece in _MASK_RUN.split(token) if piece]
    if len(pieces) != 1 or _MASK_RUN.search(token):  # a key as a provider masks it
        head, tail = (pieces[0], pieces[-1]) if pieces else ("", "")
        for secret in secrets:
            if (len(head) >= 3 and secret.startswith(head)) or (
                len(tail) >= 3 and secret.endswith(tail)
            ):
                return MASK
        return token
    for secret in secrets:
        if (
            (len(token) >= 6 and secret.startswith(token))
            or (len(token) >= 4 and secret.endswith(token))
            or (len(token) >= 8 and token in secret)
        ):
            return MASK
    return token


def held_secrets(model: Any) -> list[str]:
    """The secrets a chat model holds (its ``SecretStr`` fields: ``openai_api_key``, ...),
    through the bindings wrapping it, so they can be masked where the model's errors go.

    Example:
        >>> from langchain_openai import ChatOpenAI
        >>> held_secrets(ChatOpenAI(model="m", api_key="sk-held-0123456789").bind(stop=["x"]))
        ['sk-held-0123456789']
    """
    found: list[str] = []
    for _ in range(10):  # a binding of a binding ...: never a cycle, but bounded anyway
        for value in getattr(model, "__dict__", {}).values():
            if isinstance(value, SecretStr) and len(value.get_secret_value()) >= 8:
                found.append(value.get_secret_value())
        inner = getattr(model, "bound", None)
        if inner is None:
            break
        model = inner
    return found


class RedactedError(Exception):
    """Stands in for a provider's exception in traces: its text with secrets masked."""


def redacting_callbacks(callbacks: Any, extra: Iterable[str] = ()) -> Any:
    """A copy of a callback manager whose tracers record model and chain errors redacted.

    LangChain's tracers store a failing call's exception (and the provider's raw error body) in
    the run they record. Each tracer is replaced by a shallow copy that shares its state (run
    map, client), so nesting is unchanged, but whose ``on_llm_error`` and ``on_chain_error``
    receive a ``RedactedError`` and no raw response. Other handlers are left as they are.
    """
    if not isinstance(callbacks, BaseCallbackManager) or not any(
        isinstance(h, BaseTracer) for h in callbacks.handlers + callbacks.inheritable_handlers
    ):
        return callbacks  # nothing records errors: no copy on the hot path
    manager = callbacks.copy()
    secrets = tuple(extra)
    cache: dict[int, BaseCallbackHandler] = {}

    def swap(handler: BaseCallbackHandler) -> BaseCallbackHandler:
        if not isinstance(handler, BaseTracer):
            return handler
        if id(handler) not in cache:
            cache[id(handler)] = _redacting_copy(handler, secrets)
        return cache[id(handler)]

    manager.handlers = [swap(h) for h in manager.handlers]
    manager.inheritable_handlers = [swap(h) for h in manager.inheritable_handlers]
    return manager


def _redacting_copy(tracer: BaseTracer, secrets: tuple[str, ...]) -> BaseTracer:
    twin = copy.copy(tracer)
    for event in ("on_llm_error", "on_chain_error"):
        original = getattr(tracer, event)

        def redacted(error: BaseException, *args: Any, _original: Any = original,
                     **kwargs: Any) -> Any:  # fmt: skip
            kwargs.pop("response", None)  # the provider's raw error body
            masked = RedactedError(redact(f"{type(error).__name__}: {error}", secrets))
            return _original(masked, *args, **kwargs)

        object.__setattr__(twin, event, redacted)
    return twin


def masked_url(url: str) -> str:
    """``url`` as it may be printed: a password in it is masked.

    Example:
        >>> masked_url("postgresql://moa:secret@db/runs"), masked_url("sqlite:///runs.db")
        ('postgresql://moa:***@db/runs', 'sqlite:///runs.db')
    """
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
