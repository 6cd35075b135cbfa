"""A LangChain agent whose model is a mixture of agents: the aggregator calls the tools.

``create_agent(model=moa, tools=[...])`` runs the usual tool loop. Only the aggregator gets the
tools (``moa.bind_tools``); the proposers are tool-free advisors that see the tool calls and
results as text. The proposers are the embedded SmolLM2-135M (offline, no key); the aggregator
is a scripted tool-calling model on the loopback OpenAI-compatible test server (a model this
small cannot call tools reliably), reached through the real ``ChatOpenAI`` client.

Run:
    python examples/tools_agent.py "What is 17 times 23?"
"""

from __future__ import annotations

import re
import sys
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from moa_graph import ChatMixtureOfAgents
from moa_graph.testing import ModelScript, OpenAICompatibleServer, ScriptedReply, ScriptedToolCall


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def scripted_aggregator(request: dict[str, Any]) -> str | ScriptedReply:
    """Call ``multiply`` on the first two numbers of the question, then report its result.

    Example:
        >>> reply = scripted_aggregator({"messages": [{"role": "user", "content": "2 x 3?"}],
        ...                              "tools": [{}]})
        >>> reply.tool_calls[0].arguments
        {'a': 2, 'b': 3}
    """
    messages = request["messages"]
    if messages[-1]["role"] == "tool":
        return f"The answer is {messages[-1]['content']}."
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    numbers = [int(n) for n in re.findall(r"\d+", str(question))][:2] or [0, 0]
    a, b = (numbers + numbers)[:2]
    return ScriptedReply(tool_calls=[ScriptedToolCall("multiply", {"a": a, "b": b})])


def main(question: str) -> None:
    """Run the agent on ``question`` and print every turn of the tool loop."""
    from moa_graph.presets import local_tiny

    proposers = list(local_tiny().chat_model().proposers)
    with OpenAICompatibleServer({"aggregator": ModelScript(reply=scripted_aggregator)}) as server:
        aggregator = ChatOpenAI(
            model="aggregator",
            base_url=server.base_url,
            api_key="sk-loopback-placeholder",  # type: ignore[arg-type]
        )
        moa = ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, layers=2)
        agent = create_agent(model=moa, tools=[multiply])
        result = agent.invoke({"messages": [("user", question)]})
    for message in result["messages"]:
        calls = getattr(message, "tool_calls", None)
        print(f"{message.type:>5}: {message.text or calls}")
    advice = result["messages"][-1].response_metadata["proposals"]
    print("proposers said:", [p["text"][:60] for p in advice])


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "What is 17 times 23?")
