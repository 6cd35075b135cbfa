"""The benchmark references do the same work as the mixture: their ratios compare like with like."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import pytest

from benchmarks import baseline, langchain_baseline
from benchmarks.harness import build_moa, critical_paths, question
from moa_graph.testing import ModelScript, OpenAICompatibleServer


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    scripts = {name: ModelScript(reply=f"Answer from {name}.") for name in baseline.PROPOSERS}
    scripts[baseline.AGGREGATOR] = ModelScript(reply="Forty two.")
    with OpenAICompatibleServer(scripts=scripts) as running:
        yield running


def _requests_of(server: OpenAICompatibleServer, text: str) -> Counter[str]:
    """Each request of the run asking ``text``: model, messages, sampling settings, streaming.

    The question is replaced by ``Q`` so runs asking different questions compare; the token
    limit is read under either of its two OpenAI names.
    """
    requests: Counter[str] = Counter()
    for record in server.requests():
        if not any(m.get("content") == text for m in record.messages):
            continue
        limit = record.params.get("max_tokens", record.params.get("max_completion_tokens"))
        request = [record.model, record.messages, record.params.get("temperature"), limit]
        requests[json.dumps([*request, record.stream], sort_keys=True).replace(text, "Q")] += 1
    return requests


def test_both_references_send_exactly_the_mixtures_requests(
    server: OpenAICompatibleServer,
) -> None:
    moa = build_moa(server.base_url)
    chat_models = langchain_baseline.chat_models(server.base_url)

    async def run_all() -> list[str]:
        api = baseline.client(server.base_url)
        try:
            return [
                (await moa.ainvoke(question("moa", 0))).text,
                await baseline.run(api, question("openai", 0)),
                await langchain_baseline.run(chat_models, question("langchain", 0)),
            ]
        finally:
            await api.close()

    assert asyncio.run(run_all()) == ["Forty two."] * 3

    mixture = _requests_of(server, question("moa", 0))
    assert sum(mixture.values()) == 4 * 2 + 1
    assert len(mixture) == 4 * 2 + 1  # every request differs: model, or the references it got
    assert _requests_of(server, question("openai", 0)) == mixture
    assert _requests_of(server, question("langchain", 0)) == mixture
    paths = critical_paths(server.requests())
    assert {len(paths[question(tag, 0)].proposer_layers) for tag in ("moa", "openai")} == {2}
