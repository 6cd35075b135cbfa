"""A mixture whose proposers (p1, p2) and aggregator (agg) are ``ChatOpenAI`` clients of the
loopback OpenAI-compatible server: what the served-endpoint tests put behind ``MoAServer``."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI

from moa_graph import ChatMixtureOfAgents
from moa_graph.testing import OpenAICompatibleServer


def remote_mixture(upstream: OpenAICompatibleServer, **settings: Any) -> ChatMixtureOfAgents:
    """Proposers ``p1``, ``p2`` and aggregator ``agg`` of ``upstream``, 2 layers, no retries
    (``settings`` override)."""

    def remote(model: str) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=upstream.base_url, api_key="sk-upstream",  # type: ignore[arg-type]
                          max_retries=0, stream_usage=True)  # fmt: skip

    options: dict[str, Any] = {"layers": 2, "max_retries": 0, **settings}
    return ChatMixtureOfAgents(
        proposers=[remote("p1"), remote("p2")], aggregator=remote("agg"), **options
    )
