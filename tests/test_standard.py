"""langchain-tests' standard suites for ChatMixtureOfAgents, fully offline.

Proposers and aggregator are real ``ChatOpenAI`` clients talking to a loopback
OpenAI-compatible server, so every request goes through the real client code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from moa_graph import ChatMixtureOfAgents
from moa_graph.testing import OpenAICompatibleServer

SERVER = OpenAICompatibleServer()


@pytest.fixture(scope="module", autouse=True)
def loopback_server() -> Iterator[OpenAICompatibleServer]:
    SERVER.start()
    yield SERVER
    SERVER.stop()


def client(model: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        base_url=SERVER.base_url,
        api_key="sk-test-placeholder",  # type: ignore[arg-type]
        max_retries=0,
        timeout=10,
    )


def mixture_params() -> dict[str, Any]:
    return {
        "proposers": [client("proposer-a"), client("proposer-b")],
        "aggregator": client("aggregator"),
        "layers": 3,
    }


class TestMixtureUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMixtureOfAgents]:
        return ChatMixtureOfAgents

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return mixture_params()


class TestMixtureIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatMixtureOfAgents]:
        return ChatMixtureOfAgents

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return mixture_params()

    @property
    def supports_model_override(self) -> bool:
        return False
