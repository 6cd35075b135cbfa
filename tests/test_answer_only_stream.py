"""Chat UIs reading the graph's ``messages`` stream see only the answer; proposal text goes to
the ``custom`` stream (deltas while written, the whole record when done)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from moa_graph import ChatMixtureOfAgents, create_moa_graph
from tests.fakes import ScriptedChatModel

QUESTION = {"messages": [HumanMessage("What are 3 fun things to do in SF?")]}


def fake(reply: str, **kwargs: Any) -> ScriptedChatModel:
    return ScriptedChatModel(reply=reply, model_name=f"model-{reply.split()[0]}", **kwargs)


def three_layers(**settings: Any) -> Any:
    proposers = [fake("alpha proposal"), fake("beta proposal")]
    return create_moa_graph(
        proposers, aggregator=fake("final answer text"), layers=3, **settings
    ).compile()


def message_text(graph: Any, context: dict[str, Any] | None = None) -> str:
    chunks = graph.stream(QUESTION, stream_mode="messages", context=context)
    return "".join(chunk.text for chunk, _ in chunks)


def test_the_messages_stream_carries_only_the_answer() -> None:
    assert message_text(three_layers()) == "final answer text"


def test_stream_proposers_puts_the_proposers_tokens_back() -> None:
    text = message_text(three_layers(), {"stream_proposers": True})
    assert text.endswith("final answer text")
    assert text.count("alpha proposal") == 2 and text.count("beta proposal") == 2


def test_a_rankers_reply_is_not_the_answer_and_stays_off_the_messages_stream() -> None:
    graph = create_moa_graph(
        [fake("seven apples"), fake("eight apples")],
        aggregator=fake("model_2"),
        layers=2,
        aggregation="rank",
    ).compile()
    assert message_text(graph) == "eight apples"
    assert "model_2" in message_text(graph, {"stream_proposers": True})


def deltas_and_records(events: list[dict[str, Any]]) -> tuple[dict[Any, str], dict[Any, Any]]:
    deltas: dict[Any, str] = defaultdict(str)
    finished: dict[Any, Any] = {}
    for event in events:
        key = (event.get("layer"), event.get("index"))
        if event["moa_event"] == "proposal_delta":
            assert key not in finished, "a delta after its proposal finished"
            deltas[key] += event["text"]
        elif event["moa_event"] == "proposal_finished":
            finished[key] = event
    return dict(deltas), finished


def custom_events(graph: Any, context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    stream = graph.stream(QUESTION, stream_mode=["messages", "custom"], context=context)
    return [chunk for mode, chunk in stream if mode == "custom"]


def test_proposal_text_streams_as_deltas_then_arrives_whole_with_its_record() -> None:
    deltas, finished = deltas_and_records(custom_events(three_layers()))
    expected = {(1, 0): "alpha proposal", (1, 1): "beta proposal"}
    expected |= {(2, 0): "alpha proposal", (2, 1): "beta proposal"}
    assert deltas == expected
    assert {key: event["text"] for key, event in finished.items()} == expected
    record = finished[(2, 1)]
    assert record["proposer"] == "model-beta" and record["attempts"] == 1
    assert record["usage"]["output_tokens"] == 2 and record["latency_s"] >= 0


def test_proposal_deltas_in_an_async_run() -> None:
    async def events() -> list[dict[str, Any]]:
        graph = three_layers()
        stream = graph.astream(QUESTION, stream_mode=["messages", "custom"])
        return [chunk async for mode, chunk in stream if mode == "custom"]

    deltas, finished = deltas_and_records(asyncio.run(events()))
    assert deltas[(1, 0)] == finished[(1, 0)]["text"] == "alpha proposal"


def test_without_streaming_proposals_still_arrive_whole() -> None:
    graph = three_layers()
    events = list(graph.stream(QUESTION, stream_mode="custom"))
    deltas, finished = deltas_and_records(events)
    assert deltas == {} and finished[(1, 1)]["text"] == "beta proposal"
    events = custom_events(graph, {"stream_proposers": False})
    deltas, finished = deltas_and_records(events)
    assert deltas == {} and len(finished) == 4


def test_a_failed_proposal_event_names_the_error_and_attempts() -> None:
    graph = create_moa_graph(
        [fake("fine"), fake("down", error=OSError("down"))], aggregator=fake("end"), layers=2
    ).compile()
    (failed,) = [e for e in custom_events(graph) if e["moa_event"] == "proposal_failed"]
    assert "down" in failed["error"] and failed["attempts"] >= 1


@pytest.mark.parametrize("layers", [2, 3])
def test_the_chat_model_streams_only_the_answer_as_before(layers: int) -> None:
    moa = ChatMixtureOfAgents(
        proposers=[fake("alpha proposal"), fake("beta proposal")],
        aggregator=fake("final answer text"),
        layers=layers,
    )
    assert "".join(chunk.text for chunk in moa.stream("hi")) == "final answer text"
