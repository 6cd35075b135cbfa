"""The test server's request log records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class RequestRecord:
    """One chat-completion request as seen by the server (never holds credentials).

    Times are ``time.time()`` stamps so they compare across processes.

    Attributes:
        id: Sequence number (1-based, per server).
        model: The requested ``model``.
        messages: The request messages (empty if the server drops them).
        params: All other request fields except ``model``/``messages``/``stream``.
        stream: Whether a streaming response was requested.
        received_at: When the request body had been read.
        answered_at: When the response was finished (``None`` while pending).
        first_token_at: When the stream's first chunk was sent (streams).
        outcome: ``"pending"``, ``"stop"``, ``"length"``, a fault name,
            ``"client_disconnected"``, ``"bad_request"`` or ``"reply_error"``.
        status: HTTP status sent, if any.
        scripted_latency: The ideal service time: ``ttft + n_tokens * per_token``
            drawn for a normal answer, a fault's ``delay``, ``None`` for ``hang``.
        ttft: Drawn time to first token.
        per_token: Drawn inter-token time.
        tail: Whether the heavy tail was drawn.
        prompt_tokens: Prompt token count (whitespace words).
        completion_tokens: Completion token count (whitespace words).
        response: The answer text sent (normal answers only).
        auth_present: Whether an auth header was sent (its value is never kept).
    """

    id: int
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    received_at: float
    answered_at: float | None = None
    first_token_at: float | None = None
    outcome: str = "pending"
    status: int | None = None
    scripted_latency: float | None = None
    ttft: float | None = None
    per_token: float | None = None
    tail: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response: str | None = None
    auth_present: bool = False

    @property
    def duration(self) -> float | None:
        """Seconds from receipt to answer, if answered."""
        return None if self.answered_at is None else self.answered_at - self.received_at

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class RequestLogQueries:
    """Request-log helpers shared by the in-process server and :class:`ServerProcess`."""

    def requests(self) -> list[RequestRecord]:
        """A snapshot of all recorded requests, oldest first."""
        raise NotImplementedError

    def requests_for(self, model: str) -> list[RequestRecord]:
        """Recorded requests for ``model``."""
        return [r for r in self.requests() if r.model == model]

    def request_count(self, model: str | None = None) -> int:
        """Number of recorded requests (for ``model`` if given)."""
        records = self.requests()
        return len(records) if model is None else sum(r.model == model for r in records)

    def in_flight(self, model: str | None = None) -> int:
        """Requests (for ``model`` if given) received and not yet answered or abandoned: the
        upstream calls still running."""
        records = self.requests() if model is None else self.requests_for(model)
        return sum(r.answered_at is None for r in records)

    def most_in_flight(self, model: str | None = None) -> int:
        """The most requests (for ``model`` if given) the server held at one moment, from their
        receipt and answer times: 1 for a server that answers one request at a time, whatever
        the machine's speed (a test of concurrency that holds on a busy machine).

        Example:
            >>> class Log(RequestLogQueries):
            ...     def requests(self):
            ...         spans = [(0.0, 2.0), (1.0, 3.0), (2.5, 4.0)]
            ...         return [RequestRecord(id=i, model="m", messages=[], params={},
            ...                               stream=False, received_at=start, answered_at=end)
            ...                 for i, (start, end) in enumerate(spans)]
            >>> Log().most_in_flight()
            2
        """
        records = self.requests() if model is None else self.requests_for(model)
        spans = [(r.received_at, r.answered_at or r.received_at) for r in records]
        return max((sum(start <= t < end for start, end in spans) for t, _ in spans), default=0)
