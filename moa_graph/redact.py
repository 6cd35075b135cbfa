"""Keep secrets out of error messages, logs, traces and stored state."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

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
