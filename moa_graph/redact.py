"""Keep secrets out of error messages, logs, traces and stored state."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.tracers.base import BaseTracer

MASK = "**********"
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|tgp|gsk|xai|key)[-_][A-Za-z0-9_\-]{12,}\b")


def known_secrets(extra: Iterable[str] = ()) -> list[str]:
    """Secret values to mask: API keys from the environment plus ``extra``."""
    values = {value for name, value in os.environ.items() if _SECRET_ENV.search(name)}
    values.update(extra)
    return sorted((v for v in values if len(v) >= 8), key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Mask every known secret and anything shaped like an API key in ``text``.

    Example:
        >>> redact("Incorrect API key provided: sk-abc123def456ghi789")
        'Incorrect API key provided: **********'
    """
    for secret in known_secrets(extra):
        text = text.replace(secret, MASK)
    return _KEY_LIKE.sub(MASK, text)


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
