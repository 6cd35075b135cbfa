"""ChatMixtureOfAgents as a drop-in chat model: results, usage, streaming, callbacks, isolation."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from moa_graph import ChatMixtureOfAgents
from tests.fakes import ScriptedChatModel


def make_moa(**kwargs: Any) -> tuple[ChatMixtureOfAgents, list[ScriptedChatModel]]:
    models = [
        ScriptedChatModel(reply="alpha beta", model_name="p1"),
        ScriptedChatModel(reply="gamma", model_name="p2"),
        ScriptedChatModel(reply="the final answer", model_name="agg"),
    ]
    moa = ChatMixtureOfAgents(proposers=models[:2], aggregator=models[2], layers=3, **kwargs)
    return moa, models


def test_invoke_returns_the_aggregator_answer_with_summed_usage_and_proposals() -> None:
    moa, models = make_moa()
    result = moa.invoke("hello there")
    assert result.content == "the final answer"
    proposals = result.response_metadata["proposals"]
    assert [(p["layer"], p["proposer"], p["text"]) for p in proposals] == [
        (1, "p1", "alpha beta"),
        (1, "p2", "gamma"),
        (2, "p1", "alpha beta"),
        (2, "p2", "gamma"),
    ]
    assert result.response_metadata["model_name"] == "moa:agg"
    expected = sum(p["usage"]["total_tokens"] for p in proposals)
    aggregator_usage = models[2]._usage(models[2].calls[0], "the final answer")
    assert result.usage_metadata["total_tokens"] == expected + aggregator_usage["total_tokens"]
    assert (
        result.usage_metadata["input_tokens"] + result.usage_metadata["output_tokens"]
        == (result.usage_metadata["total_tokens"])
    )


def test_stream_yields_aggregator_tokens_and_totals_on_the_last_chunk() -> None:
    moa, _ = make_moa()
    chunks = list(moa.stream("hello there"))
    assert [c.content for c in chunks[:-1]] == ["the", " final", " answer"]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    invoked = moa.invoke("hello there")
    assert merged.content == invoked.content
    assert merged.usage_metadata == invoked.usage_metadata
    assert merged.response_metadata["model_name"] == "moa:agg"
    assert len(merged.response_metadata["proposals"]) == 4


def test_async_invoke_stream_and_batches() -> None:
    moa, _ = make_moa()

    async def run() -> tuple[Any, list[AIMessageChunk], list[Any]]:
        invoked = await moa.ainvoke("hi")
        streamed = [c async for c in moa.astream("hi")]
        batched = await moa.abatch(["a", "b", "c"])
        return invoked, streamed, batched

    invoked, streamed, batched = asyncio.run(run())
    assert invoked.content == "the final answer"
    assert "".join(c.content for c in streamed) == "the final answer"
    assert streamed[-1].usage_metadata["total_tokens"] == invoked.usage_metadata["total_tokens"]
    assert [m.content for m in batched] == ["the final answer"] * 3
    assert [m.content for m in moa.batch(["x", "y"])] == ["the final answer"] * 2


def test_composes_in_a_chain() -> None:
    moa, models = make_moa()
    chain = ChatPromptTemplate.from_messages([("system", "Be {style}."), ("user", "{q}")])
    text = (chain | moa | StrOutputParser()).invoke({"style": "brief", "q": "Why?"})
    assert text == "the final answer"
    assert [m.content for m in models[0].calls[0]] == ["Be brief.", "Why?"]


class CountingHandler(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1


def test_caller_handlers_see_one_call_while_tracers_see_the_whole_tree() -> None:
    moa, _ = make_moa()
    handler, collector = CountingHandler(), RunCollectorCallbackHandler()
    moa.invoke("hi", config={"callbacks": [handler, collector]})
    assert handler.starts == 1
    (root,) = collector.traced_runs
    assert (root.name, root.run_type) == ("ChatMixtureOfAgents", "llm")
    (graph_run,) = root.child_runs
    assert graph_run.name == "mixture_of_agents"
    paths = run_paths(graph_run)
    assert ("propose", "proposer 1.1: p1") in paths
    assert ("propose", "proposer 2.2: p2", "ScriptedChatModel") in paths
    assert ("aggregate", "aggregator: agg", "inject_references") in paths


def run_paths(run: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every path of run names below ``run`` (its own name left out)."""
    paths: set[tuple[str, ...]] = set()
    for child in run.child_runs:
        path = (*prefix, child.name)
        paths.add(path)
        paths |= run_paths(child, path)
    return paths


def test_call_time_stop_reaches_only_the_aggregator() -> None:
    moa, models = make_moa()
    assert moa.invoke("hi", stop=[" answer"]).content == "the final"
    assert models[0].call_kwargs[0].get("stop") is None
    assert models[2].call_kwargs[0]["stop"] == [" answer"]


def test_many_proposers_all_run_at_once_under_sync_invoke() -> None:
    shared = ScriptedChatModel(reply="x", delay=0.2)
    moa = ChatMixtureOfAgents(proposers=[shared] * 8, aggregator=ScriptedChatModel(), layers=2)
    moa.invoke("hi")
    assert shared.max_active == 8


def test_works_as_a_node_of_a_parent_graph_with_a_checkpointer() -> None:
    moa, _ = make_moa()

    def call_moa(state: MessagesState) -> dict:
        return {"messages": [moa.invoke(state["messages"])]}

    parent = StateGraph(MessagesState)
    parent.add_node("moa", call_moa)
    parent.add_edge(START, "moa")
    app = parent.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "parent"}}
    first = app.invoke({"messages": [HumanMessage("one")]}, config)
    second = app.invoke({"messages": [HumanMessage("two")]}, config)
    assert first["messages"][-1].content == "the final answer"
    assert [m.content for m in second["messages"]] == [
        "one",
        "the final answer",
        "two",
        "the final answer",
    ]
    streamed = [
        chunk.content
        for chunk, _ in app.stream(
            {"messages": [HumanMessage("three")]}, config, stream_mode="messages"
        )
    ]
    assert "".join(streamed) == "the final answer"
