"""The compiled mixture as a node of a larger graph: checkpointer, streaming, interrupts."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from moa_graph import create_moa_graph
from moa_graph.subgraph import as_node
from tests.fakes import ScriptedChatModel


def mixture() -> tuple[Any, list[ScriptedChatModel]]:
    models = [ScriptedChatModel(reply=r, model_name=f"m-{r}") for r in ("A", "B", "final answer")]
    graph = create_moa_graph(models[:2], aggregator=models[2], layers=3).compile()
    return graph, models


def messages_parent() -> tuple[Any, list[ScriptedChatModel]]:
    """``approve`` (interrupt) -> ``moa`` (the compiled graph itself) -> ``review`` (interrupt)."""
    moa, models = mixture()

    def approve(state: MessagesState) -> dict[str, Any]:
        decision = interrupt({"ask": state["messages"][-1].text})
        return {"messages": [AIMessage(f"approved: {decision}")]}

    def review(state: MessagesState) -> dict[str, Any]:
        note = interrupt({"draft": state["messages"][-1].text})
        return {"messages": [AIMessage(f"reviewed: {note}")]}

    parent = StateGraph(MessagesState)
    parent.add_node("approve", approve)
    parent.add_node("moa", moa)
    parent.add_node("review", review)
    parent.add_edge(START, "approve")
    parent.add_edge("approve", "moa")
    parent.add_edge("moa", "review")
    parent.add_edge("review", END)
    return parent.compile(checkpointer=InMemorySaver()), models


def test_messages_state_parent_with_checkpointer_and_interrupts_around_the_mixture() -> None:
    app, models = messages_parent()
    config = {"configurable": {"thread_id": "t"}}
    paused = app.invoke({"messages": [HumanMessage("first?")]}, config)
    assert paused["__interrupt__"][0].value == {"ask": "first?"}
    assert models[0].calls == []  # nothing runs before the human approves
    paused = app.invoke(Command(resume="yes"), config)
    assert paused["__interrupt__"][0].value == {"draft": "final answer"}
    done = app.invoke(Command(resume="ok"), config)
    assert [m.text for m in done["messages"]] == [
        "first?", "approved: yes", "final answer", "reviewed: ok",
    ]  # fmt: skip
    assert len(models[2].calls) == 1  # resuming the review did not run the mixture again

    app.invoke({"messages": [HumanMessage("second?")]}, config)
    app.invoke(Command(resume="yes"), config)
    second = app.invoke(Command(resume="fine"), config)
    assert [m.text for m in second["messages"]][4:] == [
        "second?", "approved: yes", "final answer", "reviewed: fine",
    ]  # fmt: skip
    # Turn two: every proposer of layer 1 saw the whole thread, the first turn included.
    assert [m.text for m in models[0].calls[2]] == [m.text for m in second["messages"][:6]]


def test_stream_with_subgraphs_shows_the_mixture_namespace_progress_and_tokens() -> None:
    app, _ = messages_parent()
    config = {"configurable": {"thread_id": "s"}}
    app.invoke({"messages": [HumanMessage("q")]}, config)
    items = list(
        app.stream(
            Command(resume="yes"),
            config,
            subgraphs=True,
            stream_mode=["updates", "custom", "messages"],
        )
    )
    inner = [(mode, payload) for ns, mode, payload in items if ns and ns[0].startswith("moa:")]
    events = [p["moa_event"] for mode, p in inner if mode == "custom"]
    assert events[0] == "proposal_started" and events[-1] == "aggregation_finished"
    assert events.count("layer_done") == 2
    assert {"prepare", "propose", "collect_layer", "aggregate"} <= {
        node for mode, p in inner if mode == "updates" for node in p
    }
    tokens = [
        chunk.content
        for mode, (chunk, meta) in (x for x in inner if x[0] == "messages")
        if "moa:aggregator" in meta.get("tags", [])
    ]
    assert "".join(tokens) == "final answer"
    outer = [payload for ns, mode, payload in items if not ns and mode == "updates"]
    assert any("moa" in update for update in outer)
    assert any("__interrupt__" in update for update in outer)


class QA(TypedDict, total=False):
    question: str
    answer: str


def test_as_node_maps_a_question_and_answer_state_sync_and_async() -> None:
    moa, models = mixture()
    parent = StateGraph(QA)
    parent.add_node("moa", as_node(moa, input_key="question", output_key="answer"))
    parent.add_edge(START, "moa")
    app = parent.compile(checkpointer=InMemorySaver())
    result = app.invoke({"question": "Why?"}, {"configurable": {"thread_id": "qa"}})
    assert result == {"question": "Why?", "answer": "final answer"}
    assert [m.text for m in models[0].calls[0]] == ["Why?"]
    again = asyncio.run(app.ainvoke({"question": "How?"}, {"configurable": {"thread_id": "qa2"}}))
    assert again["answer"] == "final answer"
    namespaces = {
        ns[0].split(":")[0]
        for ns, _ in app.stream(
            {"question": "Who?"},
            {"configurable": {"thread_id": "qa3"}},
            subgraphs=True,
            stream_mode="custom",
        )
    }
    assert namespaces == {"moa"}


def test_docstring_example_runs() -> None:
    import doctest

    import moa_graph.subgraph

    result = doctest.testmod(moa_graph.subgraph, verbose=False)
    assert result.failed == 0 and result.attempted > 0
