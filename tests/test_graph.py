"""The engine: exactly the paper's requests, concurrency, proposals, progress and failures."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver

from moa_graph import (
    AggregatorError,
    ProposalsFailedError,
    ProposerSpec,
    create_moa_graph,
    inject_references,
)
from tests.fakes import ScriptedChatModel

QUESTION = [HumanMessage("What are 3 fun things to do in SF?")]


def fake(reply: str = "ok", **kwargs: object) -> ScriptedChatModel:
    return ScriptedChatModel(reply=reply, model_name=f"model-{reply}", **kwargs)


def test_layer_one_sees_the_conversation_and_later_layers_see_injected_references() -> None:
    # Proposer "a" is the slowest: completion order differs from configured order.
    a, b, c = fake("A", delay=0.05), fake("B", delay=0.02), fake("C")
    aggregator = fake("final")
    graph = create_moa_graph([a, b, c], aggregator=aggregator, layers=3).compile()

    result = graph.invoke({"messages": QUESTION})

    for proposer in (a, b, c):
        layer1, layer2 = proposer.calls
        assert [(m.type, m.content) for m in layer1] == [("human", QUESTION[0].content)]
        expected = inject_references(QUESTION, ["A", "B", "C"])
        assert [(m.type, m.content) for m in layer2] == [(m.type, m.content) for m in expected]
    (final_call,) = aggregator.calls
    assert [(m.type, m.content) for m in final_call] == [
        (m.type, m.content) for m in inject_references(QUESTION, ["A", "B", "C"])
    ]
    assert result["messages"][-1].content == "final"
    assert [(p["layer"], p["index"], p["text"]) for p in result["proposals"]] == [
        (1, 0, "A"),
        (1, 1, "B"),
        (1, 2, "C"),
        (2, 0, "A"),
        (2, 1, "B"),
        (2, 2, "C"),
    ]


def test_proposal_records_model_usage_and_latency() -> None:
    graph = create_moa_graph([fake("two words", delay=0.01)], aggregator=fake(), layers=2).compile()
    (proposal,) = graph.invoke({"messages": QUESTION})["proposals"]
    assert proposal["model"] == "model-two words"
    assert proposal["proposer"] == "model-two words"
    assert proposal["usage"] == {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}
    assert proposal["error"] is None
    assert proposal["latency_s"] >= 0.01


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_proposers_of_a_layer_run_concurrently(mode: str) -> None:
    delay, width = 0.3, 4
    shared = fake("same", delay=delay)
    graph = create_moa_graph([shared] * width, aggregator=fake(), layers=2).compile()
    if mode == "sync":
        graph.invoke({"messages": QUESTION})
    else:
        asyncio.run(graph.ainvoke({"messages": QUESTION}))
    # all four calls were in flight at once (counted by the model: not a wall-time bound,
    # which a busy machine breaks)
    assert shared.max_active == width


def test_heterogeneous_layers_use_their_own_models() -> None:
    first, second = fake("first"), fake("second")
    graph = create_moa_graph([[first, first], [second]], aggregator=fake("end")).compile()
    result = graph.invoke({"messages": QUESTION})
    assert len(first.calls) == 2 and len(second.calls) == 1
    assert second.calls[0][0].content.endswith("\n1. first\n2. first")
    assert [p["layer"] for p in result["proposals"]] == [1, 1, 2]


def test_samples_and_system_prompt_and_names_of_a_spec() -> None:
    model = fake("x")
    spec = ProposerSpec(model=model, samples=3, system_prompt="Be terse.", name="terse")
    graph = create_moa_graph([spec], aggregator=fake(), layers=2).compile()
    result = graph.invoke({"messages": QUESTION})
    assert len(model.calls) == 3
    assert all(call[0].content == "Be terse." for call in model.calls)
    assert [p["proposer"] for p in result["proposals"]] == ["terse #1", "terse #2", "terse #3"]


def test_a_spec_setting_temperature_binds_it_on_an_instance() -> None:
    model = fake("x")
    graph = create_moa_graph(
        [ProposerSpec(model=model, temperature=0.1, max_tokens=7)], aggregator=fake(), layers=2
    ).compile()
    graph.invoke({"messages": QUESTION})
    assert model.call_kwargs[0]["temperature"] == 0.1
    assert model.call_kwargs[0]["max_tokens"] == 7


def test_multi_turn_conversation_with_a_user_system_message() -> None:
    conversation = [
        SystemMessage("Be kind."),
        HumanMessage("Hi"),
        AIMessage("Hello!"),
        HumanMessage("And now?"),
    ]
    proposer, aggregator = fake("p"), fake("final")
    graph = create_moa_graph([proposer], aggregator=aggregator, layers=2).compile()
    graph.invoke({"messages": conversation})
    assert [m.content for m in proposer.calls[0]] == [m.content for m in conversation]
    sent = aggregator.calls[0]
    assert [m.type for m in sent] == ["system", "human", "ai", "human"]
    assert sent[0].content.startswith("Be kind.\n\nYou have been provided")
    assert sent[0].content.endswith("Responses from models:\n1. p")


def test_failed_proposer_is_recorded_and_references_stay_contiguous() -> None:
    broken = fake("never", error=ConnectionError("upstream reset"))
    aggregator = fake("final")
    graph = create_moa_graph(
        [fake("A"), broken, fake("C")], aggregator=aggregator, layers=2
    ).compile()
    result = graph.invoke({"messages": QUESTION})
    failed = result["proposals"][1]
    assert failed["error"] == "ConnectionError: upstream reset" and failed["text"] == ""
    assert aggregator.calls[0][0].content.endswith("Responses from models:\n1. A\n2. C")


def test_below_quorum_the_run_fails_listing_every_failure() -> None:
    proposers = [
        fake("A"),
        fake("x", error=TimeoutError("slow")),
        fake("y", error=ValueError("bad request")),
    ]
    aggregator = fake()
    graph = create_moa_graph(proposers, aggregator=aggregator, layers=2, min_proposals=2).compile()
    with pytest.raises(ProposalsFailedError) as caught:
        graph.invoke({"messages": QUESTION})
    message = str(caught.value)
    assert "layer 1: 1 of 3 proposers answered, min_proposals=2" in message
    assert "model-x (model-x): TimeoutError: slow" in message
    assert "model-y (model-y): ValueError: bad request" in message
    assert aggregator.calls == []


def test_aggregator_failure_names_the_model() -> None:
    graph = create_moa_graph(
        [fake("A")], aggregator=fake("z", error=RuntimeError("quota")), layers=2
    ).compile()
    with pytest.raises(
        AggregatorError,
        match=r"aggregator model-z \(model-z\) failed: "
        r"RuntimeError: quota",
    ):
        graph.invoke({"messages": QUESTION})


def test_progress_events_are_streamed() -> None:
    graph = create_moa_graph(
        [fake("A"), fake("B", error=OSError("down"))], aggregator=fake(), layers=3
    ).compile()
    events = [e for e in graph.stream({"messages": QUESTION}, stream_mode="custom")]
    kinds = [(e["moa_event"], e["layer"], e.get("index")) for e in events]
    assert kinds.count(("proposal_started", 1, 0)) == 1
    assert ("proposal_finished", 1, 0) in kinds and ("proposal_failed", 1, 1) in kinds
    assert kinds.index(("layer_done", 1, None)) < kinds.index(("proposal_started", 2, 0))
    assert kinds[-2:] == [("aggregation_started", 3, None), ("aggregation_finished", 3, None)]
    layer_done = next(e for e in events if e["moa_event"] == "layer_done")
    assert (layer_done["succeeded"], layer_done["failed"]) == (1, 1)


def test_messages_stream_marks_aggregator_tokens() -> None:
    graph = create_moa_graph([fake("A")], aggregator=fake("the final answer"), layers=2).compile()
    tokens = [
        chunk.content
        for chunk, meta in graph.stream({"messages": QUESTION}, stream_mode="messages")
        if "moa:aggregator" in meta.get("tags", [])
    ]
    assert "".join(tokens) == "the final answer" and len(tokens) >= 3


def test_every_call_is_traced_with_run_name_tags_and_metadata() -> None:
    graph = create_moa_graph([fake("A"), fake("B")], aggregator=fake("end"), layers=3).compile()
    collector = RunCollectorCallbackHandler()
    graph.invoke({"messages": QUESTION}, {"callbacks": [collector]})
    (root,) = collector.traced_runs
    runs = {}
    stack = list(root.child_runs)
    while stack:
        run = stack.pop()
        runs[run.name] = run
        stack.extend(run.child_runs)
    second = runs["proposer 2.2: model-B"]
    assert [c.name for c in second.child_runs] == ["inject_references", "ScriptedChatModel"]
    assert {"moa:proposer", "moa:layer:2"} <= set(second.tags)
    assert second.extra["metadata"]["moa_model"] == "model-B"
    assert runs["aggregator: model-end"].extra["metadata"]["moa_layer"] == 3
    assert "moa:aggregator" in runs["aggregator: model-end"].tags
    assert "proposer 1.1: model-A" in runs


def test_each_run_on_a_thread_starts_with_fresh_proposals() -> None:
    proposer = fake("p")
    graph = create_moa_graph([proposer], aggregator=fake("answer"), layers=2).compile(
        checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"messages": [HumanMessage("first")]}, config)
    result = graph.invoke({"messages": [HumanMessage("second")]}, config)
    assert len(result["proposals"]) == 1
    assert [m.content for m in proposer.calls[1]] == ["first", "answer", "second"]


def test_empty_conversation_is_refused_before_any_call() -> None:
    proposer = fake()
    graph = create_moa_graph([proposer], aggregator=fake(), layers=2).compile()
    with pytest.raises(ValueError, match="conversation is empty"):
        graph.invoke({"messages": []})
    assert proposer.calls == []


def test_public_schemas_stay_narrow() -> None:
    graph = create_moa_graph([fake()], aggregator=fake(), layers=2).compile()
    assert set(graph.get_input_jsonschema()["properties"]) == {"messages"}
    assert set(graph.get_output_jsonschema()["properties"]) == {"messages", "proposals"}
