"""Aggregation strategies: vote, rank, synthesis with vote counts, windows, shuffles, early exit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage

from moa_graph import ChatMixtureOfAgents, ProposerSpec, create_moa_graph
from moa_graph.aggregation import count_votes, shuffled
from moa_graph.prompts import format_references
from tests.fakes import ScriptedChatModel

QUESTION = [HumanMessage("Janet has 3 + 4 apples. How many?")]


def fake(reply: Any = "ok", name: str = "fake-model") -> ScriptedChatModel:
    return ScriptedChatModel(reply=reply, model_name=name)


def mixture(replies: list[str], aggregator: ScriptedChatModel, **options: Any) -> Any:
    proposers = [fake(text, f"p{i}") for i, text in enumerate(replies)]
    options.setdefault("layers", 2)
    return ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, **options), proposers


def system_text(messages: list[BaseMessage]) -> str:
    assert messages[0].type == "system"
    return messages[0].text


# -- vote ------------------------------------------------------------------------------------


def test_vote_returns_the_first_reference_with_the_majority_answer_without_an_aggregator_call(
) -> None:  # fmt: skip
    aggregator = fake("should not be called")
    replies = ["3 + 4 = 7. The answer is 7", "The answer is 8", "So 7 apples."]
    moa, _ = mixture(replies, aggregator, aggregation="vote")
    answer = moa.invoke(QUESTION)
    assert answer.content == replies[0]
    assert aggregator.calls == []
    metadata = answer.response_metadata
    assert metadata["moa_votes"] == {"answers": ["7", "8", "7"], "winner": "7",
                                     "decided_by": "majority"}  # fmt: skip
    assert metadata["moa_chosen"] == 0 and metadata["moa_aggregator_calls"] == 0
    proposal_tokens = sum(p["usage"]["total_tokens"] for p in metadata["proposals"])
    assert answer.usage_metadata["total_tokens"] == proposal_tokens


def test_a_tied_vote_goes_to_the_aggregator_told_how_the_answers_split() -> None:
    aggregator = fake("Checked both: the answer is 7")
    moa, _ = mixture(["The answer is 7", "The answer is 8", "no idea"], aggregator,
                     aggregation="vote")  # fmt: skip
    answer = moa.invoke(QUESTION)
    assert answer.content == "Checked both: the answer is 7"
    assert len(aggregator.calls) == 1
    prompt = system_text(aggregator.calls[0])
    assert prompt.index("1. The answer is 7") < prompt.index('"7": response 1 (1 of 3)')
    assert '"8": response 2 (1 of 3)' in prompt and "no clear final answer: response 3" in prompt
    assert answer.response_metadata["moa_votes"]["decided_by"] == "aggregator"


def test_vote_uses_a_custom_extractor() -> None:
    moa, _ = mixture(["Paris, of course", "Lyon maybe", "Paris!"], fake("unused"),
                     aggregation="vote",
                     answer_extractor=lambda text: text.split()[0].strip(",!"))  # fmt: skip
    answer = moa.invoke(QUESTION)
    assert answer.content == "Paris, of course"
    assert answer.response_metadata["moa_votes"]["answers"] == ["Paris", "Lyon", "Paris"]


def test_an_extractor_that_raises_counts_as_no_answer() -> None:
    def picky(text: str) -> str:
        if "boom" in text:
            raise RuntimeError("cannot read")
        return text[-1]

    count = count_votes(["a1", "boom", "b1"], picky)
    assert count.answers == ("1", None, "1") and count.winner == "1"


# -- rank --------------------------------------------------------------------------------------


def test_rank_returns_the_reference_the_aggregator_picked_verbatim_and_streams_only_it() -> None:
    aggregator = fake("model_2")
    replies = ["The answer is 8", "3 + 4 = 7, so 7 apples", "The answer is 6"]
    moa, _ = mixture(replies, aggregator, aggregation="rank")
    answer = moa.invoke(QUESTION)
    assert answer.content == replies[1]
    ranker_prompt = aggregator.calls[0][-1].text
    assert "model_3" in ranker_prompt and replies[2] in ranker_prompt
    assert answer.response_metadata["moa_rank"] == {"reply": "model_2", "parsed": True}
    streamed = "".join(chunk.text for chunk in moa.stream(QUESTION))
    assert streamed == replies[1]


def test_an_unreadable_ranking_falls_back_to_the_first_reference() -> None:
    moa, _ = mixture(["first", "second"], fake("I like them all"), aggregation="rank")
    answer = moa.invoke(QUESTION)
    assert answer.content == "first"
    assert answer.response_metadata["moa_rank"]["parsed"] is False


# -- synthesis with a vote summary, windows ----------------------------------------------------


def test_synthesize_with_votes_adds_the_split_after_the_references() -> None:
    aggregator = fake("The answer is 7")
    moa, _ = mixture(["The answer is 7", "The answer is 7", "The answer is 9"], aggregator,
                     aggregation="synthesize_with_votes")  # fmt: skip
    answer = moa.invoke(QUESTION)
    assert answer.content == "The answer is 7"
    prompt = system_text(aggregator.calls[0])
    assert prompt.startswith(format_references(["The answer is 7", "The answer is 7",
                                                "The answer is 9"], moa.prompt))  # fmt: skip
    assert '"7": responses 1, 2 (2 of 3)' in prompt and '"9": response 3 (1 of 3)' in prompt


def test_windows_slide_over_the_references_with_the_previous_synthesis_first() -> None:
    counter = iter(range(1, 10))
    aggregator = fake(lambda messages: f"synthesis {next(counter)}")
    sampler = fake(lambda messages: "draft")
    proposers = [ProposerSpec(model=sampler, samples=5)]
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, layers=2,
                              aggregation_window=3)  # fmt: skip
    chunks = list(moa.stream(QUESTION))
    assert "".join(chunk.text for chunk in chunks) == "synthesis 2"  # only the last is streamed
    first, second = (system_text(call) for call in aggregator.calls)
    assert "3. draft" in first and "4." not in first
    assert "1. synthesis 1\n2. draft\n3. draft" in second and "4." not in second
    final = chunks[-1]
    assert final.response_metadata["moa_windows"] == [[0, 1, 2], [3, 4]]
    assert final.response_metadata["moa_aggregator_calls"] == 2
    aggregator_tokens = final.usage_metadata["total_tokens"] - sum(
        p["usage"]["total_tokens"] for p in final.response_metadata["proposals"]
    )
    assert aggregator_tokens == sum(
        sum(len(m.text.split()) for m in call) + 2 for call in aggregator.calls
    )  # both windows' prompt and answer tokens


# -- reference order ---------------------------------------------------------------------------


def test_shuffled_references_follow_the_recorded_order_and_repeat_with_the_seed() -> None:
    replies = [f"answer {i}" for i in range(5)]
    aggregator = fake("final")
    moa, _ = mixture(replies, aggregator, layers=3, shuffle_references=True, seed=11)
    first = moa.invoke(QUESTION).response_metadata
    order, seed = first["moa_reference_order"], first["moa_shuffle_seed"]
    assert sorted(order) == list(range(5)) and order != list(range(5))
    shown = [replies[i] for i in order]
    assert format_references(shown, moa.prompt) in system_text(aggregator.calls[-1])
    assert shuffled(replies, seed)[1] == order  # the recorded seed reproduces the order
    layer_two = [p for p in first["proposals"] if p["layer"] == 2]
    assert all(sorted(p["reference_order"]) == list(range(5)) for p in layer_two)
    assert len({tuple(p["reference_order"]) for p in layer_two}) > 1  # drawn per call
    again = moa.invoke(QUESTION).response_metadata
    assert again["moa_reference_order"] == order
    assert [p.get("reference_order") for p in again["proposals"]] == [
        p.get("reference_order") for p in first["proposals"]
    ]


def test_without_a_seed_each_run_draws_and_records_its_own_order() -> None:
    moa, _ = mixture([f"answer {i}" for i in range(6)], fake("final"), shuffle_references=True)
    seeds = {moa.invoke(QUESTION).response_metadata["moa_shuffle_seed"] for _ in range(4)}
    assert len(seeds) == 4


# -- seeds -------------------------------------------------------------------------------------


def test_sample_k_is_called_with_seed_plus_k_and_the_aggregator_with_the_seed() -> None:
    sampler, aggregator = fake("draft"), fake("final")
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=sampler, samples=3)],
                              aggregator=aggregator, layers=2, seed=5)  # fmt: skip
    moa.invoke(QUESTION)
    assert sorted(kwargs["seed"] for kwargs in sampler.call_kwargs) == [5, 6, 7]
    assert aggregator.call_kwargs[0]["seed"] == 5


def test_a_run_chooses_its_own_seed_and_an_invalid_one_is_refused_before_any_call() -> None:
    sampler, aggregator = fake("draft"), fake("final")
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=sampler, samples=2)],
                              aggregator=aggregator, layers=2, seed=5)  # fmt: skip
    moa.invoke(QUESTION, {"configurable": {"moa": {"seed": 40}}})
    moa.with_config(configurable={"moa": {"seed": 90}}).invoke(QUESTION)
    moa.graph.invoke({"messages": QUESTION}, context={"seed": 7})
    moa.invoke(QUESTION)  # the configured seed again
    drawn = [kwargs["seed"] for kwargs in sampler.call_kwargs]
    assert sorted(drawn[:2]) == [40, 41] and sorted(drawn[2:4]) == [90, 91]
    assert sorted(drawn[4:6]) == [7, 8] and sorted(drawn[6:]) == [5, 6]
    assert [kwargs["seed"] for kwargs in aggregator.call_kwargs] == [40, 90, 7, 5]
    for bad, message in ((-1, "seed: must be an integer from 0 to 2147483647"),
                         ("7", "seed: must be an integer")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            moa.invoke(QUESTION, {"configurable": {"moa": {"seed": bad}}})
    assert len(sampler.call_kwargs) == 8  # refused before any call


# -- early exit --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_early_exit_skips_the_remaining_layers_when_every_proposer_agrees(mode: str) -> None:
    aggregator = fake("never")
    replies = ["3 + 4 = 7. The answer is 7", "The answer is 7.", "Seven: 7"]
    moa, proposers = mixture(replies, aggregator, layers=3, early_exit=True)
    graph = moa.graph
    events: list[dict[str, Any]] = []
    if mode == "sync":
        for kind, payload in graph.stream({"messages": QUESTION}, stream_mode=["custom", "values"]):
            if kind == "custom":
                events.append(payload)
            else:
                state = payload
    else:
        state = asyncio.run(graph.ainvoke({"messages": QUESTION}))
    answer = state["messages"][-1]
    assert answer.content == replies[0]
    assert aggregator.calls == [] and all(len(p.calls) == 1 for p in proposers)
    assert answer.response_metadata["moa_early_exit"] == {"layer": 1, "answer": "7",
                                                          "calls_saved": 4}  # fmt: skip
    assert "moa_fallback" not in answer.response_metadata
    if mode == "sync":
        assert {"moa_event": "early_exit", "layer": 1, "calls_saved": 4} in events


def test_without_consensus_early_exit_runs_every_layer() -> None:
    aggregator = fake("The answer is 7")
    moa, proposers = mixture(["The answer is 7", "The answer is 8"], aggregator, layers=3,
                             early_exit=True)  # fmt: skip
    answer = moa.invoke(QUESTION)
    assert all(len(p.calls) == 2 for p in proposers) and len(aggregator.calls) == 1
    assert "moa_early_exit" not in answer.response_metadata


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"aggregation": "average"}, "aggregation: must be one of synthesize, vote"),
        ({"answer_extractor": "letter"}, "answer_extractor: unknown 'letter'"),
        ({"aggregation_window": 1}, "aggregation_window: must be an integer >= 2"),
        ({"aggregation_window": 3, "aggregation": "vote"}, "aggregation_window: slides"),
        ({"seed": "7"}, "seed: must be an integer"),
    ],
)
def test_invalid_aggregation_settings_are_refused_naming_the_setting(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_moa_graph([fake()], aggregator=fake(), layers=2, **options)


def test_the_strategy_can_be_chosen_per_run_and_is_checked() -> None:
    aggregator = fake("synthesized")
    moa, _ = mixture(["The answer is 7", "The answer is 7", "The answer is 9"], aggregator)
    assert moa.invoke(QUESTION).content == "synthesized"
    voting = moa.with_config(configurable={"moa": {"aggregation": "vote"}})
    assert voting.invoke(QUESTION).content == "The answer is 7"
    assert len(aggregator.calls) == 1
    with pytest.raises(ValueError, match="aggregation: must be one of"):
        moa.with_config(configurable={"moa": {"aggregation": "mean"}}).invoke(QUESTION)


# -- answers that must be written by the aggregator --------------------------------------------

TOOL = {"type": "function", "function": {"name": "add", "description": "Add", "parameters": {}}}


@pytest.mark.parametrize("options", [{"aggregation": "vote"}, {"aggregation": "rank"},
                                     {"early_exit": True, "layers": 3}])  # fmt: skip
def test_with_tools_bound_the_aggregator_writes_the_answer(options: dict[str, Any]) -> None:
    aggregator = fake("The answer is 7")
    moa, _ = mixture(["The answer is 7", "The answer is 7"], aggregator, **options)
    answer = moa.invoke(QUESTION, tools=[TOOL])
    assert answer.content == "The answer is 7" and len(aggregator.calls) == 1
    assert aggregator.call_kwargs[0]["tools"] == [TOOL]
    assert "moa_early_exit" not in answer.response_metadata
    if "aggregation" in options:  # told how the answers split, instead of a verbatim pick
        assert answer.response_metadata["moa_aggregation"] == "synthesize_with_votes"
        assert '"7": responses 1, 2 (2 of 2)' in system_text(aggregator.calls[0])


def test_rank_with_a_single_reference_needs_no_call() -> None:
    aggregator = fake("model_1")
    moa, _ = mixture(["only answer"], aggregator, aggregation="rank")
    assert moa.invoke(QUESTION).content == "only answer" and aggregator.calls == []


def test_progress_reports_an_aggregation_only_when_the_aggregator_is_called() -> None:
    decided, _ = mixture(["The answer is 7", "The answer is 7"], fake("x"), aggregation="vote")
    tied, _ = mixture(["The answer is 7", "The answer is 8"], fake("x"), aggregation="vote")
    for moa, expected in ((decided, []), (tied, ["aggregation_started", "aggregation_finished"])):
        events = [
            part["moa_event"]
            for part in moa.graph.stream({"messages": QUESTION}, stream_mode="custom")
            if part["moa_event"].startswith("aggregation")
        ]
        assert events == expected
