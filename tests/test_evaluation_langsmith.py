"""``langsmith.evaluate`` offline on in-memory examples; tagging; the upload path's data set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Dataset, Item
from moa_graph.evaluation.judge import Judge
from moa_graph.evaluation.langsmith_eval import (
    evaluate_system,
    example_id,
    langsmith_enabled,
    sync_dataset,
    to_examples,
)
from moa_graph.evaluation.runner import run_experiment
from moa_graph.evaluation.systems import single
from tests.fakes import ScriptedChatModel


@pytest.fixture(autouse=True)
def no_langsmith_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_TRACING"):
        monkeypatch.delenv(name, raising=False)


def dataset() -> Dataset:
    items = tuple(
        Item(id=f"n/{i}", turns=(f"What is {i} + 1?",), gold=str(i + 1)) for i in range(3)
    )
    return Dataset("n", items, "numeric", source="test")


def add_one_except_two(messages: list[BaseMessage]) -> str:
    number = int(messages[-1].text.split()[2])
    return f"The answer is {number + 1 if number != 2 else 0}"


def _feedback(row: dict[str, Any]) -> dict[str, Any]:
    return {result.key: result.score for result in row["evaluation_results"]["results"]}


@pytest.mark.usefixtures("socket_disabled")
def test_offline_evaluate_scores_in_memory_examples_and_tags_runs() -> None:
    model = ScriptedChatModel(reply=add_one_except_two)
    system = single(model, name="adder")
    results = list(evaluate_system(system, dataset()))
    assert len(results) == 3 and len(model.calls) == 3
    by_item = {row["example"].inputs["item_id"]: row for row in results}
    assert [_feedback(by_item[f"n/{i}"])["correct"] for i in range(3)] == [1.0, 1.0, 0.0]
    feedback = _feedback(by_item["n/0"])
    assert feedback["calls"] == 1 and feedback["output_tokens"] == 4 and feedback["wall_s"] >= 0
    assert "model_s" not in feedback  # no call cache timed the calls: left out, not sent as 0
    run = by_item["n/1"]["run"]
    assert run.name == "adder"
    assert {"moa-graph:eval", "system:adder", "kind:single"} <= set(run.tags)
    metadata = run.extra["metadata"]
    assert metadata["system"] == "adder" and metadata["system_config"]["kind"] == "single"
    assert metadata["dataset"] == "n"
    assert run.outputs["answer"] == "The answer is 2" and run.outputs["cached"] is False


@pytest.mark.usefixtures("socket_disabled")
def test_model_seconds_feedback_when_a_call_cache_times_the_calls(tmp_path: Path) -> None:
    from langchain_core.globals import set_llm_cache

    from moa_graph.evaluation.call_cache import CallCache

    system = single(ScriptedChatModel(reply=add_one_except_two, delay=0.1), name="adder")
    set_llm_cache(CallCache(tmp_path / "calls.sqlite"))
    try:
        results = list(evaluate_system(system, dataset()))
    finally:
        set_llm_cache(None)
    assert all(_feedback(row)["model_s"] >= 0.1 for row in results)


@pytest.mark.usefixtures("socket_disabled")
def test_evaluate_reuses_cached_answers(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache.jsonl")
    first = ScriptedChatModel(reply=add_one_except_two)
    run_experiment(dataset(), [single(first, name="adder")], cache=cache, progress=None)
    second = ScriptedChatModel(reply=add_one_except_two)
    results = list(evaluate_system(single(second, name="adder"), dataset(), cache=cache))
    assert second.calls == []
    assert all(row["run"].outputs["cached"] for row in results)
    assert sorted(_feedback(row)["correct"] for row in results) == [0.0, 1.0, 1.0]


@pytest.mark.usefixtures("socket_disabled")
def test_judge_datasets_get_the_mt_bench_rating_as_feedback() -> None:
    judged = Dataset("j", (Item(id="j/1", turns=("Write a haiku.",)),), "judge")
    judge_model = ScriptedChatModel(reply="Lovely. [[8]]")
    results = list(
        evaluate_system(
            single(ScriptedChatModel(reply="leaves fall"), name="poet"),
            judged,
            judge=Judge(judge_model),
        )
    )
    assert _feedback(results[0])["mt_bench"] == 8.0 and len(judge_model.calls) == 1
    assert "correct" not in _feedback(results[0])


def test_examples_have_stable_ids_and_gold_outputs() -> None:
    examples = to_examples(dataset())
    assert [e.inputs["item_id"] for e in examples] == ["n/0", "n/1", "n/2"]
    assert examples[1].outputs == {"gold": "2", "choices": []}
    assert examples[0].id == example_id(dataset().items[0]) == to_examples(dataset())[0].id


def test_key_detection() -> None:
    assert not langsmith_enabled({})
    assert langsmith_enabled({"LANGSMITH_API_KEY": "k"})
    assert langsmith_enabled({"LANGCHAIN_API_KEY": "k"})
    assert not langsmith_enabled({"LANGSMITH_API_KEY": ""})


class FakeClient:
    """Records the data set calls the upload path makes."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.created: list[str] = []
        self.examples: list[dict[str, Any]] = []

    def has_dataset(self, *, dataset_name: str) -> bool:
        return dataset_name in self.existing

    def create_dataset(self, name: str, *, description: str) -> SimpleNamespace:
        self.created.append(name)
        return SimpleNamespace(id="ds-1")

    def create_examples(self, *, dataset_id: str, examples: list[dict[str, Any]]) -> None:
        assert dataset_id == "ds-1"
        self.examples += examples


def test_sync_dataset_uploads_each_subset_once() -> None:
    client = FakeClient(set())
    name = sync_dataset(client, dataset())
    assert name.startswith("moa-graph-n-3-") and client.created == [name]
    assert [e["inputs"]["item_id"] for e in client.examples] == ["n/0", "n/1", "n/2"]
    assert client.examples[0]["id"] == example_id(dataset().items[0])
    again = FakeClient({name})
    assert sync_dataset(again, dataset()) == name and again.created == []
    smaller = Dataset("n", dataset().items[:2], "numeric")
    assert sync_dataset(FakeClient(set()), smaller) != name


def test_with_a_key_the_experiment_is_uploaded_on_a_synced_dataset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import langsmith

    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-test")
    captured: dict[str, Any] = {}

    def fake_evaluate(target: Any, **kwargs: Any) -> str:
        captured.update(kwargs, target=target)
        return "experiment"

    monkeypatch.setattr(langsmith, "evaluate", fake_evaluate)
    client = FakeClient(set())
    system = single(ScriptedChatModel(reply="x"), name="adder")
    assert evaluate_system(system, dataset(), client=client) == "experiment"
    assert captured["upload_results"] is True and captured["client"] is client
    assert captured["data"] == client.created[0] and len(client.examples) == 3
    assert captured["metadata"]["system_config"]["kind"] == "single"
    assert captured["experiment_prefix"] == "moa-graph-adder"

    monkeypatch.delenv("LANGSMITH_API_KEY")
    evaluate_system(system, dataset())
    assert captured["upload_results"] is False
    assert [e.inputs["item_id"] for e in captured["data"]] == ["n/0", "n/1", "n/2"]


@pytest.mark.usefixtures("socket_disabled")
def test_the_judge_evaluator_reuses_the_runners_gradings(tmp_path: Path) -> None:
    judged = Dataset("j", (Item(id="j/1", turns=("Write a haiku.",)),), "judge")
    cache = ResultCache(tmp_path / "cache.jsonl")
    first_judge = ScriptedChatModel(reply="[[6]]")
    system = single(ScriptedChatModel(reply="leaves fall"), name="poet")
    run_experiment(judged, [system], cache=cache, judge=Judge(first_judge), progress=None)
    assert len(first_judge.calls) == 1
    second_judge = ScriptedChatModel(reply="[[2]]")
    results = list(evaluate_system(system, judged, cache=cache, judge=Judge(second_judge)))
    assert second_judge.calls == [] and _feedback(results[0])["mt_bench"] == 6.0
