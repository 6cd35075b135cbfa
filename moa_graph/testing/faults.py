"""Fault kinds the scripted OpenAI-compatible test server can inject.

A :class:`~moa_graph.testing.scripts.ModelScript` holds a queue of faults; the
server consumes one per request (in order) before normal answers resume. A
queue entry is a :class:`Fault`, its string value (``"http_429"``), or a
:class:`FaultSpec` when the fault needs parameters.

Fault kinds and what a client sees:

* ``http_429`` -- 429 ``rate_limit_exceeded`` with a ``Retry-After`` header.
* ``http_500`` / ``http_503`` -- server errors (``openai.InternalServerError``).
* ``http_400`` / ``http_401`` / ``http_404`` -- ``BadRequestError``,
  ``AuthenticationError``, ``NotFoundError``.
* ``context_length`` -- 400 with OpenAI's ``context_length_exceeded`` error body.
* ``hang`` -- the request is read but never answered until the client
  disconnects or the server stops (client-side timeout).
* ``reset`` -- the connection is closed abruptly (TCP RST), no response.
* ``malformed_json`` -- 200 with an invalid JSON body (or an invalid SSE event).
* ``empty`` -- 200 with empty content ``""``.
* ``cut_stream`` -- a stream sends a few chunks then the connection drops
  without ``[DONE]``; a non-stream request gets a truncated body.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    """Kinds of injectable faults (values are the wire/JSON names)."""

    HTTP_429 = "http_429"
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    HTTP_400 = "http_400"
    HTTP_401 = "http_401"
    HTTP_404 = "http_404"
    CONTEXT_LENGTH = "context_length"
    HANG = "hang"
    RESET = "reset"
    MALFORMED_JSON = "malformed_json"
    EMPTY = "empty"
    CUT_STREAM = "cut_stream"


@dataclass(frozen=True)
class FaultSpec:
    """A fault with parameters.

    Attributes:
        kind: The fault kind.
        retry_after: Seconds sent in ``Retry-After`` (``http_429`` only).
        delay: Seconds to wait before the fault fires (default: immediately).
        chunks_before_cut: Content chunks sent before a ``cut_stream`` drop.
        message: Error message overriding the default (HTTP error faults).
    """

    kind: Fault
    retry_after: float = 1.0
    delay: float = 0.0
    chunks_before_cut: int = 2
    message: str | None = None

    def __post_init__(self) -> None:
        # Accept the wire name too: FaultSpec("cut_stream") == FaultSpec(Fault.CUT_STREAM).
        object.__setattr__(self, "kind", Fault(self.kind))

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as accepted by :func:`as_fault_spec`."""
        return {
            "kind": self.kind.value,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "chunks_before_cut": self.chunks_before_cut,
            "message": self.message,
        }


FaultLike = Fault | str | FaultSpec | dict[str, Any]
"""Anything :func:`as_fault_spec` accepts."""


def as_fault_spec(fault: FaultLike) -> FaultSpec:
    """Normalise a fault queue entry to a :class:`FaultSpec`.

    Raises:
        ValueError: If the fault kind is unknown.
    """
    if isinstance(fault, FaultSpec):
        return fault
    if isinstance(fault, dict):
        params = {k: v for k, v in fault.items() if k != "kind"}
        return FaultSpec(kind=Fault(fault["kind"]), **params)
    return FaultSpec(kind=Fault(fault))


# (status, error type, error code, message) for the plain HTTP error faults.
HTTP_ERRORS: dict[Fault, tuple[int, str, str | None, str]] = {
    Fault.HTTP_429: (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached (injected by the test server).",
    ),
    Fault.HTTP_500: (500, "server_error", None, "Internal server error (injected)."),
    Fault.HTTP_503: (503, "server_error", None, "The server is overloaded (injected)."),
    Fault.HTTP_400: (400, "invalid_request_error", None, "Bad request (injected)."),
    Fault.HTTP_401: (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided (injected).",
    ),
    Fault.HTTP_404: (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model does not exist (injected).",
    ),
    Fault.CONTEXT_LENGTH: (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
    ),
}
