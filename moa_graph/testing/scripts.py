"""Per-model scripted behaviour for the OpenAI-compatible test server."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moa_graph.testing.faults import FaultLike, FaultSpec, as_fault_spec


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call the server answers with (``arguments`` are sent as a JSON string)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ScriptedReply:
    """A full answer: text and tool calls (``finish_reason`` is ``"tool_calls"`` with calls).

    Example:
        >>> ScriptedReply(tool_calls=[ScriptedToolCall("add", {"a": 1})]).tool_calls[0].name
        'add'
    """

    content: str = ""
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)


ReplyFn = Callable[[dict[str, Any]], str | ScriptedReply]
"""A reply callable: receives the parsed request JSON, returns the answer text (or a
``ScriptedReply`` with tool calls)."""

_TOKEN_RE = re.compile(r"\s*\S+")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into stream pieces, one word each, that join back to ``text``.

    Each piece carries its leading whitespace (like BPE tokens do); trailing
    whitespace is appended to the last piece.

    Example:
        >>> tokenize("a  b c ")
        ['a', '  b', ' c ']
    """
    pieces = _TOKEN_RE.findall(text)
    if not pieces:
        return [text] if text else []
    rest = len(text) - sum(map(len, pieces))
    if rest:
        pieces[-1] += text[-rest:]
    return pieces


def count_tokens(text: str) -> int:
    """The server's deterministic token count: whitespace-separated words."""
    return len(text.split())


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message (string content or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Token count of all prompt messages."""
    return sum(count_tokens(message_text(m)) for m in messages if isinstance(m, dict))


def default_reply(request: dict[str, Any]) -> str:
    """``"[<model>] answer to: <last user message>"`` -- shows who answered what."""
    messages = request.get("messages") or []
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = message_text(user[-1]) if user else ""
    return f"[{request.get('model', '')}] answer to: {last}"


@dataclass
class ScriptedLatency:
    """Latency drawn for one request.

    Attributes:
        ttft: Seconds before the first token (whole response when not streaming).
        per_token: Seconds between streamed tokens.
        tail: Whether the heavy-tail branch was drawn.
    """

    ttft: float
    per_token: float
    tail: bool = False

    def total(self, n_tokens: int) -> float:
        """Scripted time to the full answer for ``n_tokens`` completion tokens."""
        return self.ttft + n_tokens * self.per_token


@dataclass
class ModelScript:
    """How the test server answers one model.

    Attributes:
        reply: Answer text, or a callable ``(request_json) -> str``; ``None``
            uses :func:`default_reply`.
        ttft: Seconds to the first token (non-streaming: to the whole response,
            which also waits ``per_token`` per completion token).
        per_token: Seconds between streamed tokens.
        tail_probability: Probability that a request takes the heavy tail.
        tail_factor: Multiplier applied to ``ttft`` and ``per_token`` in the tail.
        jitter: Relative uniform jitter on latencies (0.1 means x U[0.9, 1.1]).
        seed: Seed of this script's private ``random.Random``.
        faults: Queue of faults, consumed one per request before normal answers.

    Example:
        >>> script = ModelScript(reply="hi", ttft=0.01, faults=["http_429"])
        >>> script.next_fault().kind.value
        'http_429'
    """

    reply: str | ReplyFn | None = None
    ttft: float = 0.0
    per_token: float = 0.0
    tail_probability: float = 0.0
    tail_factor: float = 10.0
    jitter: float = 0.0
    seed: int = 0
    faults: list[FaultLike] = field(default_factory=list)
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def reseed(self) -> None:
        """Restart the latency random stream from ``seed``."""
        with self._lock:
            self._rng = random.Random(self.seed)

    def add_faults(self, *faults: FaultLike) -> None:
        """Append faults to the queue (thread-safe)."""
        with self._lock:
            self.faults.extend(faults)

    def next_fault(self) -> FaultSpec | None:
        """Pop the next queued fault, if any (thread-safe)."""
        with self._lock:
            if not self.faults:
                return None
            return as_fault_spec(self.faults.pop(0))

    def answer(self, request: dict[str, Any]) -> str:
        """The full (untruncated) answer text for ``request``."""
        return self.respond(request).content

    def respond(self, request: dict[str, Any]) -> ScriptedReply:
        """The full (untruncated) answer for ``request``: text and any tool calls."""
        if self.reply is None:
            return ScriptedReply(default_reply(request))
        if isinstance(self.reply, str):
            return ScriptedReply(self.reply)
        reply = self.reply(request)
        return reply if isinstance(reply, ScriptedReply) else ScriptedReply(str(reply))

    def draw_latency(self) -> ScriptedLatency:
        """Draw this request's latency (advances the seeded random stream)."""
        with self._lock:
            tail = self.tail_probability > 0 and self._rng.random() < self.tail_probability
            scale = self.tail_factor if tail else 1.0
            if self.jitter:
                scale *= self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return ScriptedLatency(self.ttft * scale, self.per_token * scale, tail)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (callable replies cannot be serialised).

        Raises:
            TypeError: If ``reply`` is a callable.
        """
        if callable(self.reply):
            raise TypeError("a callable reply cannot be serialised to JSON")
        with self._lock:
            faults = [as_fault_spec(f).to_dict() for f in self.faults]
        return {
            "reply": self.reply,
            "ttft": self.ttft,
            "per_token": self.per_token,
            "tail_probability": self.tail_probability,
            "tail_factor": self.tail_factor,
            "jitter": self.jitter,
            "seed": self.seed,
            "faults": faults,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelScript:
        """Build from the JSON form produced by :meth:`to_dict` (keys optional)."""
        data = dict(data)
        faults: list[FaultLike] = [as_fault_spec(f) for f in data.pop("faults", [])]
        return cls(faults=faults, **data)
