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

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            from moa_graph.checkpoints import checkpoint_kind  # imports no server package

            checkpoint_kind(self.checkpoint)  # ValueError naming the accepted URLs
        for option in fields(self):
            minimum, value = option.metadata["minimum"], getattr(self, option.name)
            if minimum is not None and value is not None and value < minimum:
                raise ValueError(f"{option.name}: must be at least {minimum:g} (got {value!r})")
