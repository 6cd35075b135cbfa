"""LLM-as-judge: FastChat's prompts, rating/verdict parsing, and position-swapped comparison."""

from __future__ import annotations

import pytest
from langchain_core.messages import BaseMessage

from moa_graph.evaluation.costs import TokenUsage
from moa_graph.evaluation.datasets import Item, load_mtbench
from moa_graph.evaluation.judge import (
    Comparison,
    Grading,
    Judge,
    load_judge_prompts,
    parse_rating,
    parse_verdict,
    prompt_name,
    result_from_dict,
    result_to_dict,
)
from tests.fakes import ScriptedChatModel


@pytest.mark.parametrize(
    ("judgment", "rating"),
    [
        ("Helpful and correct. Rating: [[9]]", 9.0),
        ("[[7.5]]", 7.5),
        ("I rate it [6] overall.", 6.0),
        ("Rating: 4", 4.0),
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("No rating given.", None),
        ("Compared with [[3]] before, now [[8]]", 3.0),  # FastChat takes the first match
    ],
)
def test_parse_rating(judgment: str, rating: float | None) -> None:
    assert parse_rating(judgment) == rating


@pytest.mark.parametrize(
    ("judgment", "verdict"),
    [
        ("Assistant A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Equally good: [[C]]", "tie"),
        ('Output "[[A]]" if A is better, "[[B]]" if B... My verdict: [[B]]', "B"),
        ("A is better.", None),
    ],
)
def test_parse_verdict_reads_the_last_marker(judgment: str, verdict: str | None) -> None:
    assert parse_verdict(judgment) == verdict


def test_the_packaged_fastchat_prompts_are_all_there() -> None:
    prompts = load_judge_prompts()
    for kind in ("single", "pairwise"):
        for reference in (False, True):
            for turn in (1, 2):
                prompt = prompts[prompt_name(kind, reference=reference, turn=turn)]  # type: ignore[arg-type]
                assert prompt.type == kind
    assert prompts["single-v1"].output_format == "[[rating]]"
    assert "{ref_answer_1}" in prompts["single-math-v1"].prompt_template


def _last_prompt(model: ScriptedChatModel, index: int = -1) -> list[BaseMessage]:
    return model.calls[index]


def test_grading_a_two_turn_reference_question_uses_the_reference_prompts() -> None:
    item = next(i for i in load_mtbench() if i.meta["category"] == "math")
    model = ScriptedChatModel(
        reply=lambda m: "Correct. [[8]]" if len(model.calls) == 1 else "[[4]]"
    )
    grading = Judge(model).grade(item, ["first answer", "second answer"])
    assert grading.ratings == (8.0, 4.0) and grading.score == 6.0
    first, second = model.calls
    assert "reference answer" in first[0].text + first[1].text
    assert item.meta["reference"][0] in first[1].text and "first answer" in first[1].text
    assert "second answer" not in first[1].text
    assert "### Reference answer:" in second[1].text and item.turns[1] in second[1].text
    assert "second answer" in second[1].text and item.meta["reference"][1] in second[1].text
    assert grading.usage.input_tokens > 0


def test_grading_a_general_question_without_reference() -> None:
    item = Item(id="x/1", turns=("Write a haiku.",))
    model = ScriptedChatModel(reply="Nice haiku. Rating: [[7]]")
    grading = Judge(model).grade(item, ["Leaves fall"])
    assert grading.ratings == (7.0,)
    system, user = model.calls[0]
    assert system.text == "You are a helpful assistant."
    assert "[Question]\nWrite a haiku." in user.text and "Leaves fall" in user.text
    assert "Reference" not in user.text


def test_unreadable_ratings_count_as_missing() -> None:
    item = Item(id="x/1", turns=("a", "b"))
    grading = Judge(ScriptedChatModel(reply="no idea")).grade(item, ["1", "2"])
    assert grading.ratings == (None, None) and grading.score is None


def _prefers(word: str) -> ScriptedChatModel:
    """A judge that picks whichever assistant's answer contains ``word``."""

    def reply(messages: list[BaseMessage]) -> str:
        text = messages[-1].text
        a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
        return "[[A]]" if word in a else "[[B]]"

    return ScriptedChatModel(reply=reply)


def test_comparison_swaps_positions_and_cancels_a_position_bias() -> None:
    item = Item(id="x/1", turns=("Explain MoA.",))
    good = Judge(_prefers("GOOD")).compare(item, ["GOOD answer"], ["plain answer"])
    assert good.verdicts == (("A", "B"),)  # the system is A in game 1, B in game 2
    assert good.score == 1.0 and good.outcome == "win"

    bad = Judge(_prefers("GOOD")).compare(item, ["plain answer"], ["GOOD answer"])
    assert bad.score == 0.0 and bad.outcome == "loss"

    biased = Judge(ScriptedChatModel(reply="[[A]]")).compare(item, ["x"], ["y"])
    assert biased.score == 0.5 and biased.outcome == "tie"


def test_comparison_prompts_show_both_orders() -> None:
    model = ScriptedChatModel(reply="[[C]]")
    item = Item(id="x/1", turns=("Q?",))
    comparison = Judge(model).compare(item, ["mine"], ["theirs"])
    first, second = (call[-1].text for call in model.calls)
    assert first.index("mine") < first.index("theirs")
    assert second.index("theirs") < second.index("mine")
    assert comparison.score == 0.5 and comparison.game_scores == [0.5, 0.5]


def test_two_turn_comparison_uses_the_multi_turn_prompt_and_skips_unreadable_games() -> None:
    model = ScriptedChatModel(reply=lambda m: "[[A]]" if len(model.calls) == 3 else "unsure")
    item = Item(id="x/1", turns=("Q1?", "Q2?"))
    comparison = Judge(model).compare(item, ["m1", "m2"], ["t1", "t2"])
    assert len(model.calls) == 4
    assert "Assistant A's Conversation with User" in model.calls[2][-1].text
    assert comparison.verdicts == ((None, None), ("A", None))
    assert comparison.game_scores == [1.0] and comparison.outcome == "win"
    none = Comparison(((None, None),), (("", ""),), TokenUsage())
    assert none.score is None and none.outcome is None


def test_answer_turns_must_match_the_item() -> None:
    judge = Judge(ScriptedChatModel(reply="[[5]]"))
    with pytest.raises(ValueError, match="1 turn"):
        judge.grade(Item(id="x/1", turns=("q",)), ["a", "b"])
    with pytest.raises(ValueError, match="at most two"):
        judge.grade(Item(id="x/1", turns=("1", "2", "3")), ["a", "b", "c"])


def test_results_round_trip_through_json_form() -> None:
    grading = Grading((8.0, None), ("[[8]]", "?"), TokenUsage(3, 4))
    comparison = Comparison((("A", "tie"),), (("[[A]]", "[[C]]"),), TokenUsage(1, 2))
    assert result_from_dict(result_to_dict(grading)) == grading
    assert result_from_dict(result_to_dict(comparison)) == comparison
