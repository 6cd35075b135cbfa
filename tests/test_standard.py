"""langchain-tests' standard suites for ChatMixtureOfAgents, fully offline.

Proposers and aggregator are real ``ChatOpenAI`` clients talking to a loopback
OpenAI-compatible server, so every request goes through the real client code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from moa_graph import ChatMixtureOfAgents
from moa_graph.testing import (
    ModelScript,
    OpenAICompatibleServer,
    ScriptedReply,
    ScriptedToolCall,
)


def aggregator_reply(request: dict[str, Any]) -> str | ScriptedReply:
    """A scripted tool-using aggregator: calls a tool while the last turn is not a tool result.

    The tool is the one ``tool_choice`` names, else the first; its arguments follow the tool's
    JSON schema, filled from the last user message (its first number, its quoted text).
    """
    messages, tools = request["messages"], request.get("tools") or []
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":  # structured output, method="json_schema"
        schema = response_format["json_schema"]["schema"]
        user = next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")
        return json.dumps(_arguments({"parameters": schema}, user))
    if not tools or messages[-1]["role"] == "tool":
        results = [str(m.get("content")) for m in messages if m["role"] == "tool"]
        return f"Done: {results[-1]}" if results else "No tool needed."
    choice = request.get("tool_choice")
    wanted = choice["function"]["name"] if isinstance(choice, dict) else None
    tool = next((t for t in tools if t["function"]["name"] == wanted), tools[0])["function"]
    user = next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")
    return ScriptedReply(tool_calls=[ScriptedToolCall(tool["name"], _arguments(tool, user))])


def _arguments(tool: dict[str, Any], user: str) -> dict[str, Any]:
    number = re.search(r"\d+", user)
    quoted = re.search(r"'([^']+)'", user)
    values = {
        "integer": int(number.group()) if number else 3,
        "number": float(number.group()) if number else 3.0,
        "boolean": True,
        "string": quoted.group(1) if quoted else user[:40],
    }
    properties = (tool.get("parameters") or {}).get("properties", {})
    return {
        name: values.get(spec.get("type", "string"), json.dumps(spec))
        for name, spec in properties.items()
    }


SERVER = OpenAICompatibleServer({"aggregator": ModelScript(reply=aggregator_reply)})


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

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A mixture has no single API key (each model has its own, in its ProposerSpec or its
        # provider's variable), and ChatMixtureOfAgents refuses unknown fields: drop the key.
        params = super().standard_chat_model_params
        params.pop("api_key")
        return params


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
