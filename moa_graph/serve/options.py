"""How ``moa-graph serve`` serves: every server option declared once, in ``ServeOptions``.

Each field is a keyword of ``serve`` and a flag of ``moa-graph serve`` (``max_body_bytes`` ->
``--max-body-bytes``) with the same default. This module imports no server package, so the
command line can describe the options without loading one.

Example:
    >>> ServeOptions().max_body_bytes == 8 * 1024 * 1024
    True
    >>> ServeOptions(workers=0)
    Traceback (most recent call last):
    ...
    ValueError: workers: must be at least 1 (got 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _option(default: Any, doc: str, minimum: float | None = None, shown: str | None = None) -> Any:
    """A server option: its default, a one-line doc, a lower bound, the default as shown."""
    metadata = {"doc": doc, "minimum": minimum, "shown": shown or str(default)}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServeOptions:
    """The options of an OpenAI-compatible endpoint (see ``moa_graph.serve.openai_app``)."""

    host: str = _option("127.0.0.1", "interface to bind (set MOA_GRAPH_API_KEY before exposing it)")
    port: int = _option(8000, "TCP port", minimum=0)
    model_name: str | None = _option(None, "served model id", shown="moa:<aggregator model>")
    workers: int = _option(1, "worker processes, each building its own mixture", minimum=1)
    checkpoint: str | None = _option(
        None,
        "keep the run of each request with an Idempotency-Key there (sqlite:///PATH, "
        "postgresql://...): a retry with the key, to any worker sharing it, finishes or "
        "repeats the run instead of paying for it again",
        shown="none",
    )
    lease_seconds: float = _option(
        30.0,
        "with --checkpoint: how long the key of a run whose worker died stays locked (409) "
        "before a retry may finish the run",
        minimum=1,
    )
    # A mixture accepts 400,000 characters of conversation by default (``max_input_chars``); as
    # JSON one character takes up to 12 bytes (an emoji escaped as a ``\uXXXX`` surrogate pair,
    # as Python's ``json`` does), so 4.8 MB plus the messages' structure: 8 MiB takes any
    # encoding of an acceptable conversation and still bounds the memory a request can take.
    max_body_bytes: int = _option(8 * 1024 * 1024, "larger request bodies get 413", minimum=1)
    body_timeout: float = _option(
        30.0, "seconds a client has to send its request body, then 408", minimum=0.001
    )
    timeout_keep_alive: int = _option(
        5, "seconds an idle keep-alive connection stays open", minimum=1
    )
    playground: bool = _option(
        True, "serve the playground page at / (--no-playground leaves it out)", shown="on"
    )
    # h11's own bound on a head still incomplete, applied to complete heads too (h11 reads one
    # that arrives in a single read whatever its length). Node.js also defaults to 16 KiB; a
    # client's head is under 1 KiB (a bearer key, a few headers).
    max_head_bytes: int = _option(
        16 * 1024, "longer request heads (request line and headers) get 431", minimum=1024
    )
    # Open connections per worker process. 300 concurrent streams were served in the load
    # probe; 1,000 leaves room for them and for keep-alive clients, and with the upstream
    # connections each run opens stays under common file-descriptor limits (the soft limit is
    # raised to the hard one at start, and a warning names this option if it is too low).
    max_connections: int = _option(
        1000, "open connections per worker beyond which new ones get 503 and are closed", minimum=1
    )
    # Apache's mod_reqtimeout gives a head 20 s (header=20-40); a head is under 16 KiB, which
    # a client sends in well under a second on any link that can carry a chat.
    head_timeout: float = _option(
        20.0,
        "seconds a client has to send a request's head (after connecting, or after the last "
        "response), then the connection is closed",
        minimum=0.001,
    )
    # A chat request is at most 5 levels deep (body, messages, a message, its content parts, a
    # part) plus a tool call's arguments, which a tool defines: 32 leaves those 27 levels and
    # keeps every walk of the request far from Python's recursion limit (about 1,000).
    max_json_depth: int = _option(
        32, "deeper JSON in a request body (tool-call arguments too) gets 400", minimum=6
    )
    # Each message costs about 0.15 ms to read and check here; a conversation at the 400,000-
    # character cap in turns of 400 characters has 1,000 messages.
    max_messages: int = _option(1000, "more messages in one request get 400", minimum=1)
    # Every model call of a run converts every message on the event loop (the openai SDK's
    # request transform, about 0.25 ms a message on one core, measured), and a layer's
    # proposers start together: messages x model calls bounds how long one request can hold
    # the loop. 3,000 is about 0.75 s: other requests (/v1/models, other streams) wait less
    # than 1 s; that is 230 messages for the paper's 13-call MoA, 600 for a 5-call mixture.
    max_message_calls: int = _option(
        3000,
        "more messages x model calls of a run (the per-request conversion cost) get 400",
        minimum=1,
    )

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            from moa_graph.checkpoints import checkpoint_kind  # imports no server package

            checkpoint_kind(self.checkpoint)  # ValueError naming the accepted URLs
        for option in fields(self):
            minimum, value = option.metadata["minimum"], getattr(self, option.name)
            if minimum is not None and value is not None and value < minimum:
                raise ValueError(f"{option.name}: must be at least {minimum:g} (got {value!r})")
