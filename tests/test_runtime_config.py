"""Per-run choices (layers, proposers, temperatures, aggregator) via context and configurable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langgraph.checkpoint.memory import InMemorySaver

from moa_graph import ChatMixtureOfAgents, ProposerSpec, create_moa_graph, inject_references
from moa_graph.errors import AggregatorError
from tests.fakes import ScriptedChatModel

QUESTION = {"messages": [HumanMessage("Why?")]}


def models() -> dict[str, ScriptedChatModel]:
    return {name: ScriptedChatModel(reply=name.upper(), model_name=name) for name in "abcd"}


def calls(fakes: dict[str, ScriptedChatModel]) -> dict[str, int]:
    return {name: len(model.calls) for name, model in fakes.items()}


def test_graph_context_narrows_layers_proposers_temperatures_and_aggregator() -> None:
    fakes = models()
    graph = create_moa_graph(
        [fakes["a"], fakes["b"], fakes["c"]], aggregator=fakes["d"], layers=3
    ).compile()
    context = {"layers": 2, "proposers": ["c", "a"], "aggregator": "b", "temperature": 0.2,
               "aggregator_temperature": 0.1}  # fmt: skip
    result = graph.invoke(QUESTION, context=context)
    assert calls(fakes) == {"a": 1, "b": 1, "c": 1, "d": 0}
    # configured order and positions, whatever order was asked
    assert [(p["layer"], p["index"], p["proposer"]) for p in result["proposals"]] == [
        (1, 0, "a"),
        (1, 2, "c"),
    ]
    assert result["messages"][-1].text == "B"
    assert fakes["a"].call_kwargs[0]["temperature"] == 0.2
    assert fakes["b"].call_kwargs[0]["temperature"] == 0.1
    expected = inject_references(QUESTION["messages"], ["A", "C"])
    assert [m.text for m in fakes["b"].calls[0]] == [m.text for m in expected]
    # The next run without a context uses the whole configured mixture again.
    graph.invoke(QUESTION)
    assert calls(fakes) == {"a": 3, "b": 3, "c": 3, "d": 1}
    assert "temperature" not in fakes["a"].call_kwargs[-1]


def test_a_sampled_proposer_is_chosen_by_name_or_one_sample() -> None:
    fakes = models()
    spec = ProposerSpec(model=fakes["a"], name="self", samples=3)
    graph = create_moa_graph([spec, fakes["b"]], aggregator=fakes["d"], layers=2).compile()
    whole = graph.invoke(QUESTION, context={"proposers": ["self"]})
    assert [p["proposer"] for p in whole["proposals"]] == ["self #1", "self #2", "self #3"]
    one = graph.invoke(QUESTION, context={"proposers": ["self #2", "b"]})
    assert [p["proposer"] for p in one["proposals"]] == ["self #2", "b"]


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"layers": 4}, r"layers: must be an integer from 2 to the configured 3"),
        ({"layers": 1}, r"layers: must be an integer from 2"),
        ({"layers": True}, r"layers: must be an integer"),
        ({"proposers": []}, r"proposers: give a non-empty list"),
        ({"proposers": "a"}, r"proposers: give a non-empty list"),
        ({"proposers": ["a", "zz"]}, r"proposers: unknown proposer\(s\) \['zz'\]"),
        ({"proposers": ["a"]}, r"proposers: too few chosen.*min_proposals: 2"),
        ({"temperature": 2.5}, r"temperature: must be a number from 0 to 2"),
        ({"aggregator_temperature": "hot"}, r"aggregator_temperature: must be a number"),
        ({"aggregator": "openai:gpt-4o"}, r"aggregator: 'openai:gpt-4o' is not a configured"),
    ],
)
def test_bad_choices_fail_before_any_call_naming_the_key(
    context: dict[str, Any], message: str
) -> None:
    fakes = models()
    graph = create_moa_graph(
        [fakes["a"], fakes["b"], fakes["c"]], aggregator=fakes["d"], layers=3, min_proposals=2
    ).compile()
    with pytest.raises(ValueError, match=message):
        graph.invoke(QUESTION, context=context)
    moa = ChatMixtureOfAgents(proposers=[fakes["a"], fakes["b"], fakes["c"]],
                              aggregator=fakes["d"], layers=3, min_proposals=2)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        moa.invoke("Why?", {"configurable": {"moa": context}})
    assert all(count == 0 for count in calls(fakes).values())


def test_ambiguous_aggregator_name_is_refused() -> None:
    same = [ScriptedChatModel(reply="x", model_name="twin") for _ in range(2)]
    graph = create_moa_graph(same, aggregator=ScriptedChatModel(), layers=2).compile()
    with pytest.raises(ValueError, match="aggregator: 'twin' names 2 configured models"):
        graph.invoke(QUESTION, context={"aggregator": "twin"})


def test_graph_context_ignores_keys_it_does_not_know() -> None:
    fakes = models()
    graph = create_moa_graph([fakes["a"]], aggregator=fakes["d"], layers=2).compile()
    graph.invoke(QUESTION, context={"user_id": "u1", "layers": 2})  # a parent's own context
    assert calls(fakes) == {"a": 1, "b": 0, "c": 0, "d": 1}


def chat_model(fakes: dict[str, ScriptedChatModel]) -> ChatMixtureOfAgents:
    return ChatMixtureOfAgents(
        proposers=[fakes["a"], fakes["b"], fakes["c"]], aggregator=fakes["d"], layers=3
    )


def test_chat_model_takes_choices_from_configurable_in_every_call_style() -> None:
    fakes = models()
    choices = {"layers": 2, "proposers": ["b"], "aggregator": "c", "temperature": 0.4}
    moa = chat_model(fakes).with_config(configurable={"moa": choices})
    answer = moa.invoke("Why?")
    assert answer.text == "C" and answer.response_metadata["aggregator_model"] == "c"
    assert [p["proposer"] for p in answer.response_metadata["proposals"]] == ["b"]
    assert "".join(chunk.text for chunk in moa.stream("Why?")) == "C"

    async def run_async() -> list[str]:
        first = await moa.ainvoke("Why?")
        streamed = "".join([chunk.text async for chunk in moa.astream("Why?")])
        return [first.text, streamed]

    assert asyncio.run(run_async()) == ["C", "C"]
    assert [m.text for m in moa.batch(["x", "y"])] == ["C", "C"]
    assert calls(fakes) == {"a": 0, "b": 6, "c": 6, "d": 0}
    assert {kw["temperature"] for kw in fakes["b"].call_kwargs} == {0.4}
    assert all("temperature" not in kw for kw in fakes["c"].call_kwargs)  # aggregator: its own


def test_chat_model_choices_reach_it_inside_a_chain_and_stop_still_goes_to_the_aggregator() -> None:
    fakes = models()
    prompt = ChatPromptTemplate.from_messages([("user", "{q}")])
    chain = prompt | chat_model(fakes).bind(stop=["never"])
    config = {"configurable": {"moa": {"layers": 2, "proposers": ["a"]}}}
    answer = chain.invoke({"q": "Why?"}, config)
    assert answer.text == "D"
    assert calls(fakes) == {"a": 1, "b": 0, "c": 0, "d": 1}
    assert fakes["d"].call_kwargs[0]["stop"] == ["never"]
    assert "moa_context" not in fakes["d"].call_kwargs[0]


def test_chat_model_refuses_unknown_configurable_keys_and_declares_its_schema() -> None:
    fakes = models()
    moa = chat_model(fakes)
    with pytest.raises(ValueError, match=r"configurable.moa: unknown key\(s\) \['aggregator_kw"):
        moa.invoke("Why?", {"configurable": {"moa": {"aggregator_kwargs": {"model": "x"}}}})
    schema = moa.config_schema().model_json_schema()
    assert "moa" in schema["$defs"]["Configurable"]["properties"]
    assert set(schema["$defs"]["RunChoices"]["properties"]) == {
        "layers", "proposers", "temperature", "aggregator", "aggregator_temperature", "aggregation",
        "seed", "confidence_temperature", "staircase",
    }  # fmt: skip
    assert calls(fakes) == {"a": 0, "b": 0, "c": 0, "d": 0}


def test_docstring_examples_run() -> None:
    import doctest

    import moa_graph.engine.run_choices

    result = doctest.testmod(moa_graph.engine.run_choices, verbose=False)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("key", ["model", "base_url", "api_key", "extra_headers"])
def test_a_run_cannot_redirect_the_aggregator_call(key: str) -> None:
    aggregator = ScriptedChatModel(reply="final")
    graph = create_moa_graph([ScriptedChatModel(reply="p")], aggregator=aggregator,
                             layers=2).compile()  # fmt: skip
    with pytest.raises(ValueError, match=f"aggregator_kwargs: '{key}' is not allowed"):
        graph.invoke({"messages": [("user", "q")]},
                     context={"aggregator_kwargs": {key: "http://elsewhere"}})  # fmt: skip
    assert aggregator.calls == []


@pytest.mark.parametrize("staircase", [None, 4])
def test_a_resumed_run_cannot_redirect_the_aggregator_call(staircase: int | None) -> None:
    """Resuming skips ``prepare``, so the aggregator's call checks the run's arguments again."""
    aggregator = ScriptedChatModel(reply="final", error=RuntimeError("down"))
    proposer = ScriptedChatModel(reply="p")
    graph = create_moa_graph(
        [proposer], aggregator=ProposerSpec(model=aggregator, continuation="prefill"), layers=2,
        staircase=staircase,
    ).compile(checkpointer=InMemorySaver())  # fmt: skip
    config = {"configurable": {"thread_id": "t"}}
    with pytest.raises(AggregatorError):
        graph.invoke({"messages": [("user", "q")]}, config)
    aggregator.error, calls = None, len(aggregator.calls)
    with pytest.raises(ValueError, match="aggregator_kwargs: 'base_url' is not allowed"):
        graph.invoke(None, config, context={"aggregator_kwargs": {"base_url": "http://x"}})
    assert len(aggregator.calls) == calls
    assert graph.invoke(None, config)["messages"][-1].content == "final"


def test_stop_and_tools_pass_to_the_aggregator() -> None:
    aggregator = ScriptedChatModel(reply="one two three")
    graph = create_moa_graph([ScriptedChatModel(reply="p")], aggregator=aggregator,
                             layers=2).compile()  # fmt: skip
    result = graph.invoke({"messages": [("user", "q")]},
                          context={"aggregator_kwargs": {"stop": [" two"]}})  # fmt: skip
    assert result["messages"][-1].content == "one"
