"""What reaches an OpenAI-compatible server: the reference implementation's requests, exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from moa_graph import AGGREGATE_AND_SYNTHESIZE_PROMPT, ChatMixtureOfAgents, ProposerSpec
from moa_graph.testing import ModelScript, OpenAICompatibleServer


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "slow-a": ModelScript(reply="Answer A.", ttft=0.15),
        "fast-b": ModelScript(reply="  Answer B.\n"),
        "agg": ModelScript(reply="Final answer."),
    }
    with OpenAICompatibleServer(scripts=scripts) as running:
        yield running


def spec(server: OpenAICompatibleServer, model: str) -> ProposerSpec:
    return ProposerSpec(
        model=f"openai:{model}", base_url=server.base_url, api_key="sk-test-placeholder"
    )


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_requests_match_the_reference_implementation(
    server: OpenAICompatibleServer, mode: str
) -> None:
    moa = ChatMixtureOfAgents(
        proposers=[spec(server, "slow-a"), spec(server, "fast-b")],
        aggregator=spec(server, "agg"),
        layers=3,
    )
    question = "What are 3 fun things to do in SF?"
    if mode == "invoke":
        answer = moa.invoke(question).content
    elif mode == "ainvoke":
        answer = asyncio.run(moa.ainvoke(question)).content
    else:
        answer = "".join(str(chunk.content) for chunk in moa.stream(question))
    assert answer == "Final answer."

    user = {"role": "user", "content": question}
    injected = {
        "role": "system",
        "content": AGGREGATE_AND_SYNTHESIZE_PROMPT + "\n1. Answer A.\n2. Answer B.",
    }
    first_a, second_a = server.requests_for("slow-a")
    first_b, second_b = server.requests_for("fast-b")
    for first in (first_a, first_b):
        assert first.messages == [user]
        assert first.params["temperature"] == 0.7, first.params
        assert first.params.get("max_tokens", first.params.get("max_completion_tokens")) == 512
    for later in (second_a, second_b, *server.requests_for("agg")):
        assert later.messages == [injected, user]
    assert server.request_count() == 5
