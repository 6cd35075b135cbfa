"""Tools: the aggregator decides tool calls, proposers advise on the conversation as text."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from moa_graph import ChatMixtureOfAgents
from moa_graph.tool_rendering import render_tool_turns
from tests.fakes import ScriptedChatModel

Decide = Callable[[list[BaseMessage], dict[str, Any]], AIMessage]


class ToolCallingFake(BaseChatModel):
    """An aggregator with tools, as OpenAI-style models bind them; records every call."""

    decide: Decide
    calls: list[tuple[list[BaseMessage], dict[str, Any]]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "tool-calling-fake"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append((list(messages), kwargs))
        return ChatResult(generations=[ChatGeneration(message=self.decide(messages, kwargs))])


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def add_then_answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
    """Call ``add`` once, then answer with the tool's result."""
    if isinstance(messages[-1], ToolMessage):
        return AIMessage(f"The sum is {messages[-1].content}.")
    assert kwargs["tools"][0]["function"]["name"] == "add"
    return AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}])


def mixture(aggregator: BaseChatModel, layers: int = 3) -> ChatMixtureOfAgents:
    proposers = [ScriptedChatModel(reply="use add", model_name=n) for n in ("p1", "p2")]
    return ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, layers=layers)


def test_bind_tools_binds_what_the_aggregator_itself_would() -> None:
    aggregator = ToolCallingFake(decide=add_then_answer)
    bound = mixture(aggregator).bind_tools([add], tool_choice="any")
    assert bound.kwargs == aggregator.bind_tools([add], tool_choice="any").kwargs  # type: ignore[attr-defined]


def test_the_aggregator_gets_the_tools_and_its_tool_calls_are_the_answer() -> None:
    aggregator = ToolCallingFake(decide=add_then_answer)
    moa = mixture(aggregator)
    answer = moa.bind_tools([add]).invoke("What is 2 + 3?")
    assert isinstance(answer, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in answer.tool_calls] == [
        ("add", {"a": 2, "b": 3}, "call_1")
    ]
    assert aggregator.calls[0][1]["tools"] == [convert_to_openai_tool(add)]
    for proposer in moa.proposers:
        assert all("tools" not in kwargs for kwargs in proposer.call_kwargs)


def test_streamed_tool_calls_merge_into_the_aggregators() -> None:
    moa = mixture(ToolCallingFake(decide=add_then_answer))
    chunks = list(moa.bind_tools([add]).stream("What is 2 + 3?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("add", {"a": 2, "b": 3})]


async def test_async_tool_calls() -> None:
    moa = mixture(ToolCallingFake(decide=add_then_answer))
    answer = await moa.bind_tools([add]).ainvoke("What is 2 + 3?")
    assert answer.tool_calls[0]["name"] == "add"


def test_an_aggregator_without_tool_support_is_refused() -> None:
    moa = mixture(ScriptedChatModel(reply="x"))
    with pytest.raises(NotImplementedError, match="aggregator"):
        moa.bind_tools([add])


def test_create_agent_completes_a_tool_loop() -> None:
    aggregator = ToolCallingFake(decide=add_then_answer)
    moa = mixture(aggregator)
    agent = create_agent(model=moa, tools=[add])
    result = agent.invoke({"messages": [HumanMessage("What is 2 + 3?")]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert result["messages"][2].content == "5"
    assert result["messages"][-1].content == "The sum is 5."
    # The aggregator saw the real tool turns; the proposers saw them as text.
    second_call = aggregator.calls[1][0]
    assert isinstance(second_call[-1], ToolMessage)
    for proposer in moa.proposers:
        last_round = proposer.calls[-2:]  # layers 1 and 2 of the second model call
        for messages in last_round:
            assert not any(isinstance(m, ToolMessage) for m in messages)
            assert not any(getattr(m, "tool_calls", None) for m in messages)
            text = "\n".join(m.text for m in messages)
            assert "Called tool add (id call_1)" in text
            assert "Tool result (add, id call_1): 5" in text


class Person(BaseModel):
    """A person."""

    name: str
    age: int


def test_with_structured_output_returns_a_validated_object() -> None:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        assert kwargs["tool_choice"] == "any"
        call = {"name": "Person", "args": {"name": "Ada", "age": "36"}, "id": "c1"}
        return AIMessage("", tool_calls=[call])

    structured = mixture(ToolCallingFake(decide=answer)).with_structured_output(Person)
    assert structured.invoke("Who wrote the first program?") == Person(name="Ada", age=36)


# -- rendering ------------------------------------------------------------------------------


def test_rendering_keeps_roles_and_merges_parallel_results() -> None:
    calls = [
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"},
        {"name": "add", "args": {"a": 3, "b": 4}, "id": "c2", "type": "tool_call"},
    ]
    human = HumanMessage("Add 1+2 and 3+4")
    out = render_tool_turns(
        [
            human,
            AIMessage("Let me add.", tool_calls=calls),
            ToolMessage("3", tool_call_id="c1"),
            ToolMessage("boom", tool_call_id="c2", status="error"),
            AIMessage("3 and 7"),
        ]
    )
    assert out[0] is human
    assert [m.type for m in out] == ["human", "ai", "human", "ai"]
    assert out[1].content == (
        "Let me add.\n"
        'Called tool add (id c1) with arguments {"a": 1, "b": 2}\n'
        'Called tool add (id c2) with arguments {"a": 3, "b": 4}'
    )
    assert not out[1].tool_calls  # type: ignore[attr-defined]
    assert out[2].content == "Tool result (add, id c1): 3\n\nTool error (add, id c2): boom"


def test_rendering_reads_tool_use_blocks_and_list_content() -> None:
    ai = AIMessage(
        [
            {"type": "text", "text": "some text"},
            {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "MoA"}},
        ]
    )
    result = ToolMessage([{"type": "text", "text": "found"}], name="search", tool_call_id="t1")
    out = render_tool_turns([HumanMessage("find MoA"), ai, result])
    assert out[1].content == 'some text\nCalled tool search (id t1) with arguments {"q": "MoA"}'
    assert out[2].content == "Tool result (search, id t1): found"


def test_rendering_leaves_a_plain_conversation_alone() -> None:
    messages = [HumanMessage("hi"), AIMessage("hello"), HumanMessage("bye")]
    out = render_tool_turns(messages)
    assert all(a is b for a, b in zip(out, messages, strict=True))


def test_rendered_arguments_stay_readable() -> None:
    call = {"name": "greet", "args": {"name": "你好"}, "id": "c9", "type": "tool_call"}
    out = render_tool_turns([HumanMessage("hi"), AIMessage("", tool_calls=[call])])
    assert json.loads(out[1].text.split("arguments ", 1)[1]) == {"name": "你好"}
    assert "你好" in out[1].text
