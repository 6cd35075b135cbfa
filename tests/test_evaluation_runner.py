"""The runner: answers, scoring, judging; the resumable cache; the progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Dataset, Item
from moa_graph.evaluation.judge import Judge
from moa_graph.evaluation.progress import Progress, format_duration
from moa_graph.evaluation.report import markdown_report
from moa_graph.evaluation.runner import run_experiment
from moa_graph.evaluation.systems import single
from tests.fakes import ScriptedChatModel


def numeric_dataset(n: int = 5) -> Dataset:
    items = tuple(
        Item(id=f"n/{i}", turns=(f"What is {i} + 1?",), gold=str(i + 1)) for i in range(n)
    )
    return Dataset("n", items, "numeric")


def adder(messages: list[BaseMessage]) -> str:
    """Right for even numbers, wrong for odd ones."""
    number = int(messages[-1].text.split()[2])
    return f"The answer is {number + 1 if number % 2 == 0 else number}"


def test_scores_every_item_of_every_system_in_item_order() -> None:
    right = ScriptedChatModel(reply=adder)
    wrong = ScriptedChatModel(reply="The answer is 0")
    experiment = run_experiment(
        numeric_dataset(4),
        [single(right, name="right"), single(wrong, name="wrong")],
        progress=None,
    )
    assert [(r.system, r.item_id) for r in experiment.results[:3]] == [
        ("right", "n/0"),
        ("wrong", "n/0"),
        ("right", "n/1"),
    ]
    assert [r.score.correct for r in experiment.for_system("right")] == [True, False, True, False]
    assert [r.score.extracted for r in experiment.for_system("wrong")] == ["0"] * 4


def test_an_interrupted_run_resumes_and_computes_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"

    def interrupt_after_three(messages: list[BaseMessage]) -> str:
        if len(first.calls) > 3:
            raise KeyboardInterrupt
        return adder(messages)

    first = ScriptedChatModel(reply=interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(
            numeric_dataset(), [single(first, name="m")], cache=ResultCache(path), progress=None
        )
    assert len(path.read_text().splitlines()) == 3

    second = ScriptedChatModel(reply=adder)
    experiment = run_experiment(
        numeric_dataset(), [single(second, name="m")], cache=ResultCache(path), progress=None
    )
    assert len(second.calls) == 2  # items 4 and 5 only
    assert [m[-1].text for m in second.calls] == ["What is 3 + 1?", "What is 4 + 1?"]
    assert [r.score.correct for r in experiment.results] == [True, False, True, False, True]

    third = ScriptedChatModel(reply=adder)
    run_experiment(
        numeric_dataset(), [single(third, name="m")], cache=ResultCache(path), progress=None
    )
    assert third.calls == []


def test_answers_are_reused_only_for_the_same_configuration(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache.jsonl")
    run_experiment(
        numeric_dataset(2), [single(ScriptedChatModel(reply=adder), name="m")], cache=cache,
        progress=None,
    )  # fmt: skip
    same = ScriptedChatModel(reply=adder)
    run_experiment(numeric_dataset(2), [single(same, name="m")], cache=cache, progress=None)
    assert same.calls == []
    changed = ScriptedChatModel(reply=adder, model_name="another-model")
    run_experiment(numeric_dataset(2), [single(changed, name="m")], cache=cache, progress=None)
    assert len(changed.calls) == 2


def test_failures_are_reported_not_cached_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"

    def flaky(messages: list[BaseMessage]) -> str:
        if "2 + 1" in messages[-1].text:
            raise RuntimeError("provider down")
        return adder(messages)

    experiment = run_experiment(
        numeric_dataset(3),
        [single(ScriptedChatModel(reply=flaky), name="m")],
        cache=ResultCache(path),
        progress=None,
    )
    failed = [r for r in experiment.results if r.error]
    assert [(r.item_id, r.answer) for r in failed] == [("n/2", None)]
    assert "RuntimeError: provider down" in (failed[0].error or "")
    assert failed[0].score.correct is None

    retry = ScriptedChatModel(reply=adder)
    experiment = run_experiment(
        numeric_dataset(3), [single(retry, name="m")], cache=ResultCache(path), progress=None
    )
    assert len(retry.calls) == 1 and not any(r.error for r in experiment.results)


def test_concurrent_runs_give_the_same_results() -> None:
    model = ScriptedChatModel(reply=adder, delay=0.05)
    systems = [single(model, name="a"), single(ScriptedChatModel(reply=adder), name="b")]
    parallel = run_experiment(numeric_dataset(6), systems, concurrency=4, progress=None)
    sequential = run_experiment(
        numeric_dataset(6), [single(ScriptedChatModel(reply=adder), name="a")], progress=None
    )
    assert model.max_active > 1
    assert [r.score for r in parallel.for_system("a")] == [r.score for r in sequential.results]


def test_argument_checks() -> None:
    model = ScriptedChatModel()
    with pytest.raises(ValueError, match="unique"):
        run_experiment(numeric_dataset(1), [single(model, name="x"), single(model, name="x")])
    with pytest.raises(ValueError, match="not one of the systems"):
        run_experiment(numeric_dataset(1), [single(model, name="x")], reference="y")
    with pytest.raises(ValueError, match="needs a judge"):
        run_experiment(numeric_dataset(1), [single(model, name="x")], reference="x")


def test_judging_grades_compares_and_is_cached(tmp_path: Path) -> None:
    items = tuple(Item(id=f"j/{i}", turns=("Q1?", "Q2?")) for i in range(2))
    dataset = Dataset("j", items, "judge")

    def verdicts(messages: list[BaseMessage]) -> str:
        """Pairwise prompts (their system message names "[[A]]"): prefer GOOD; else rate it."""
        text = messages[-1].text
        if "[[A]]" in messages[0].text:
            return "[[A]]" if text.index("GOOD") < text.index("meh") else "[[B]]"
        return "[[9]]" if "GOOD" in text else "[[3]]"

    def make_systems() -> tuple[ScriptedChatModel, ScriptedChatModel, list]:  # type: ignore[type-arg]
        good, meh = ScriptedChatModel(reply="GOOD"), ScriptedChatModel(reply="meh")
        return good, meh, [single(good, name="good"), single(meh, name="meh")]

    judge_model = ScriptedChatModel(reply=verdicts)
    cache = ResultCache(tmp_path / "cache.jsonl")
    _, _, systems = make_systems()
    experiment = run_experiment(
        dataset, systems, cache=cache, judge=Judge(judge_model), reference="meh", progress=None
    )
    # grading: 2 systems x 2 items x 2 turns; comparison: 1 system x 2 items x 2 turns x 2 orders
    assert len(judge_model.calls) == 8 + 8
    good = experiment.for_system("good")
    assert [r.grading.ratings for r in good if r.grading] == [(9.0, 9.0)] * 2
    assert [r.comparison.outcome for r in good if r.comparison] == ["win", "win"]
    assert all(r.comparison is None for r in experiment.for_system("meh"))
    assert experiment.judge == judge_model.model_name and experiment.reference == "meh"

    again_judge = ScriptedChatModel(reply=verdicts)
    good_model, meh_model, systems = make_systems()
    run_experiment(
        dataset,
        systems,
        cache=ResultCache(tmp_path / "cache.jsonl"),
        judge=Judge(again_judge),
        reference="meh",
        progress=None,
    )
    assert again_judge.calls == [] and good_model.calls == [] and meh_model.calls == []


def test_cache_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = ResultCache(path)
    cache.put("answer", ("s", "i/1"), {"turns": ["x"]})
    with path.open("a", encoding="utf-8") as file:
        file.write('{"kind": "answer", "key": ["s", "i/2"], "val')  # killed mid-write
    reloaded = ResultCache(path)
    assert reloaded.skipped_lines == 1 and len(reloaded) == 1
    reloaded.put("answer", ("s", "i/3"), {"turns": ["z"]})
    final = ResultCache(path)
    assert final.skipped_lines == 1
    assert final.get("answer", ("s", "i/3")) == {"turns": ["z"]}
    assert ("answer", ("s", "i/1")) in final and ("answer", ("s", "i/2")) not in final
    assert [json.loads(line)["key"][1] for line in path.read_text().splitlines()[-1:]] == ["i/3"]


def test_cache_later_records_win_and_memory_cache_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    cache = ResultCache(path)
    cache.put("k", ("a",), 1)
    cache.put("k", ("a",), 2)
    assert ResultCache(path).get("k", ("a",)) == 2
    assert dict(ResultCache(path).items("k")) == {("a",): 2}
    memory = ResultCache(None)
    memory.put("k", ("a",), (1, 2))
    assert memory.get("k", ("a",)) == [1, 2]  # stored as it would be read back


def test_progress_bar_eta_ignores_cached_items_and_draws_lines() -> None:
    out = io.StringIO()
    bar = Progress(4, label="answers", stream=out, interval=0)
    bar.advance(cached=True)
    assert bar.eta() is None
    bar.started -= 10  # ten seconds for one computed item
    bar.advance(note="m n/1")
    eta = bar.eta()
    assert eta is not None and 19 < eta < 21
    text = out.getvalue()
    assert "answers [" in text and "2/4" in text and "1 cached" in text and "m n/1" in text
    assert format_duration(65) == "1m05s"
    all_cached = Progress(1, stream=None)
    all_cached.advance(cached=True)
    assert all_cached.eta() == 0.0


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bar = Progress(2, stream=out)
    bar.advance()
    bar.advance()
    bar.close()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("\n")
    log = io.StringIO()
    quiet = Progress(3, stream=log, interval=3600)
    quiet.advance()
    quiet.advance()  # not a terminal: at most one line per interval, and the last one
    assert len(log.getvalue().splitlines()) == 1
    quiet.advance()
    assert len(log.getvalue().splitlines()) == 2 and "3/3" in log.getvalue()


def test_failed_judge_calls_are_reported_and_retried(tmp_path: Path) -> None:
    dataset = Dataset("j", (Item(id="j/1", turns=("Q?",)), Item(id="j/2", turns=("R?",))), "judge")
    system = single(ScriptedChatModel(reply="answer"), name="s")

    def judge_fails_on_r(messages: list[BaseMessage]) -> str:
        if "R?" in messages[-1].text:
            raise RuntimeError("judge overloaded")
        return "[[5]]"

    cache = ResultCache(tmp_path / "cache.jsonl")
    experiment = run_experiment(
        dataset, [system], cache=cache, judge=Judge(ScriptedChatModel(reply=judge_fails_on_r)),
        progress=None,
    )  # fmt: skip
    assert [r.grading is not None for r in experiment.results] == [True, False]
    assert experiment.judge_errors == ("s j/2 (grading): RuntimeError: judge overloaded",)
    assert "1 failed judge call(s); first: s j/2" in markdown_report(experiment)
    retry = ScriptedChatModel(reply="[[6]]")
    again = run_experiment(dataset, [system], cache=cache, judge=Judge(retry), progress=None)
    assert len(retry.calls) == 1 and again.judge_errors == ()
    assert [r.grading.ratings for r in again.results if r.grading] == [(5.0,), (6.0,)]


def test_postgres_caches_are_shared_by_every_process_that_opens_them(
    postgres_database: str,
) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    from moa_graph.evaluation.cache import ResultCache
    from moa_graph.evaluation.call_cache import CallCache

    first, second = ResultCache(postgres_database), ResultCache(postgres_database)
    first.put("answer", ("sys#1", "gsm8k/0"), {"turns": ["18"]})
    assert ("answer", ("sys#1", "gsm8k/0")) not in second  # read when opened...
    second.refresh()  # ...and when asked to look again
    assert second.get("answer", ("sys#1", "gsm8k/0")) == {"turns": ["18"]}
    assert ResultCache(postgres_database).get("answer", ["sys#1", "gsm8k/0"]) == {"turns": ["18"]}
    with_password = postgres_database.replace("moa@", "moa:secret@")  # trust: any password
    assert ResultCache(with_password).where == postgres_database.replace("moa@", "moa:***@")

    calls, other = CallCache(postgres_database), CallCache(postgres_database)
    calls.update("prompt", "model", [ChatGeneration(message=AIMessage("4"))])
    served = other.lookup("prompt", "model")  # another process pays nothing for it
    assert served is not None and served[0].message.content == "4"  # type: ignore[attr-defined]
    assert (other.hits, other.misses, len(other)) == (1, 0, 1)
    calls.close()
    other.close()
