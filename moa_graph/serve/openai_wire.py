"""OpenAI chat-completion wire format: response bodies and SSE events.

The HTTP framing (chunked transfer encoding of a stream) is the server's business.

Example:
    >>> sse(b'{"x":1}')
    b'data: {"x":1}\\n\\n'
"""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
)
SSE_DONE = b"data: [DONE]\n\n"
ROLE_DELTA = {"role": "assistant", "content": "", "refusal": None}


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error JSON shape.

    Example:
        >>> error_body("nope", "invalid_request_error")["error"]["message"]
        'nope'
    """
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion_body(
    cid: str,
    model: str,
    created: int,
    text: str,
    finish: str,
    usage: dict[str, int],
    n_choices: int = 1,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n_choices)
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


class ChunkFormatter:
    """Formats the ``chat.completion.chunk`` SSE events of one streamed response.

    With ``include_usage`` every chunk carries ``"usage": null`` and
    :meth:`usage` makes the final chunk with empty ``choices``, like OpenAI.
    """

    def __init__(
        self, cid: str, model: str, created: int, n_choices: int, include_usage: bool
    ) -> None:
        self._base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._n = n_choices
        self._include_usage = include_usage
        # Content chunks are the hot path: splice the JSON-encoded piece into a
        # pre-serialised template instead of dumping a whole dict per token.
        marker = "\x00piece\x00"
        self._content_parts = self._json({"content": marker}, None).split(dumps(marker))

    def _json(self, delta: dict[str, Any], finish: str | None) -> bytes:
        choices = [
            {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            for i in range(self._n)
        ]
        obj = {**self._base, "choices": choices}
        if self._include_usage:
            obj["usage"] = None
        return dumps(obj)

    def event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        """One chunk with the same ``delta`` for every choice, as an SSE event."""
        return sse(self._json(delta, finish))

    def content(self, piece: str) -> bytes:
        """A content chunk; same bytes as ``event({"content": piece})``, but faster."""
        return sse(dumps(piece).join(self._content_parts))

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """Chunks streaming ``calls``: each call's head, then its arguments."""
        data = b""
        for i, call in enumerate(calls):
            head = {"index": i, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            data += self.event({"tool_calls": [head]})
            args = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
            data += self.event({"tool_calls": [args]})
        return data

    def usage(self, usage: dict[str, int]) -> bytes:
        """The final usage-only chunk."""
        return sse(dumps({**self._base, "choices": [], "usage": usage}))


def sse(data: bytes) -> bytes:
    """One ``data:`` SSE event."""
    return b"data: " + data + b"\n\n"
