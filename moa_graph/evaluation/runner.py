"""Run systems over a data set: answer, score, judge; every result cached as soon as it exists.

Work goes item by item (each system answers item 1, then item 2, ...), so an interrupted run
leaves paired results for every system. Answers and judgments come from the cache when present,
so running the same experiment again only computes what is missing. A failing call is recorded
as an error for that (system, item) and not cached: the next run retries it.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from moa_graph.evaluation.datasets import Dataset, Item
    >>> from moa_graph.evaluation.systems import single
    >>> ds = Dataset("demo", (Item(id="demo/1", turns=("2+2?",), gold="4"),), metric="numeric")
    >>> fake = GenericFakeChatModel(messages=iter([AIMessage("It is 4.")]))
    >>> experiment = run_experiment(ds, [single(fake, name="fake")], progress=None)
    >>> experiment.results[0].score.correct
    True
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Dataset, Item
from moa_graph.evaluation.judge import (
    Comparison,
    Grading,
    Judge,
    result_from_dict,
    result_to_dict,
)
from moa_graph.evaluation.progress import Progress
from moa_graph.evaluation.scoring import Score, score_answer
from moa_graph.evaluation.systems import Answer, System

T = TypeVar("T")


@dataclass(frozen=True)
class ItemResult:
    """One system's result on one item.

    ``answer`` is ``None`` when the system failed (``error`` says why); ``score`` holds the
    gold-answer scoring; ``grading`` / ``comparison`` the judge's results, if any were asked for.
    """

    system: str
    item_id: str
    answer: Answer | None
    score: Score
    error: str | None = None
    grading: Grading | None = None
    comparison: Comparison | None = None


@dataclass(frozen=True)
class Experiment:
    """Everything a run produced: the data set, the systems and one result per (system, item)."""

    dataset: Dataset
    systems: tuple[System, ...]
    results: tuple[ItemResult, ...]
    judge: str | None = None
    reference: str | None = None
    judge_errors: tuple[str, ...] = ()
    """Failed judge calls ("system item: error"); those results stay unjudged until a rerun."""

    @functools.cached_property
    def _items(self) -> dict[str, Item]:
        return {item.id: item for item in self.dataset.items}

    def for_system(self, name: str) -> list[ItemResult]:
        """The results of one system, in the data set's order."""
        return [r for r in self.results if r.system == name]

    def item(self, item_id: str) -> Item:
        """The item with this id."""
        return self._items[item_id]


@dataclass(frozen=True)
class _Unit:
    """One piece of work: whose result it is, its cache entry and how to compute it."""

    system: str
    item_id: str
    kind: str
    key: tuple[str, ...]
    compute: Callable[[], Any]

    @property
    def label(self) -> str:
        return f"{self.system} {self.item_id}"


def run_experiment(
    dataset: Dataset,
    systems: Sequence[System],
    *,
    cache: ResultCache | None = None,
    judge: Judge | None = None,
    reference: str | None = None,
    concurrency: int = 1,
    progress: TextIO | None = sys.stderr,
) -> Experiment:
    """Answer every item with every system, then score (gold answers) and judge.

    Args:
        dataset: the items.
        systems: the systems to compare; names must be unique.
        cache: where answers and judgments are kept; ``None`` keeps nothing.
        judge: grades answers when the data set has no gold answers (MT-Bench), and compares
            each system with ``reference`` when that is given.
        reference: the name of the system the others are compared with, pairwise and
            position-swapped (AlpacaEval-style win rate). Needs ``judge``.
        concurrency: (system, item) pairs worked on at once (1 = one after another).
        progress: stream for the progress bar (``None``: silent).

    Returns:
        The experiment, with one ``ItemResult`` per system and item.
    """
    names = [system.name for system in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"systems: names must be unique, got {names}")
    if reference is not None and reference not in names:
        raise ValueError(f"reference: {reference!r} is not one of the systems {names}")
    if reference is not None and judge is None:
        raise ValueError("reference: a pairwise comparison needs a judge")
    cache = cache if cache is not None else ResultCache(None)

    answers = _answer_all(dataset, systems, cache, concurrency, progress)
    gradings: dict[tuple[str, str], Grading] = {}
    comparisons: dict[tuple[str, str], Comparison] = {}
    judge_errors: list[str] = []
    if judge is not None:
        gradings, comparisons, judge_errors = _judge_all(
            dataset, systems, answers, judge, reference, cache, concurrency, progress
        )

    results = []
    for item in dataset.items:
        for system in systems:
            outcome = answers[(system.name, item.id)]
            answer = outcome if isinstance(outcome, Answer) else None
            score = score_answer(dataset.metric, item, answer.text) if answer else Score(None)
            results.append(
                ItemResult(
                    system=system.name,
                    item_id=item.id,
                    answer=answer,
                    score=score,
                    error=None if answer else str(outcome),
                    grading=gradings.get((system.name, item.id)),
                    comparison=comparisons.get((system.name, item.id)),
                )
            )
    return Experiment(
        dataset,
        tuple(systems),
        tuple(results),
        judge=judge.name if judge else None,
        reference=reference,
        judge_errors=tuple(judge_errors),
    )


def _answer_all(
    dataset: Dataset,
    systems: Sequence[System],
    cache: ResultCache,
    concurrency: int,
    progress: TextIO | None,
) -> dict[tuple[str, str], Answer | str]:
    def make(system: System, item: Item) -> Callable[[], Any]:
        return lambda: system.answer(item).to_dict()

    units = [
        _Unit(system.name, item.id, "answer", (system.key, item.id), make(system, item))
        for item in dataset.items
        for system in systems
    ]
    bar = Progress(len(units), label="answers", stream=progress)
    outcomes = _run_units(units, cache, concurrency, bar)
    return {
        (unit.system, unit.item_id): Answer.from_dict(outcome)
        if isinstance(outcome, dict)
        else outcome
        for unit, outcome in zip(units, outcomes, strict=True)
    }


def _judge_all(
    dataset: Dataset,
    systems: Sequence[System],
    answers: dict[tuple[str, str], Answer | str],
    judge: Judge,
    reference: str | None,
    cache: ResultCache,
    concurrency: int,
    progress: TextIO | None,
) -> tuple[dict[tuple[str, str], Grading], dict[tuple[str, str], Comparison], list[str]]:
    keys = {system.name: system.key for system in systems}
    units: list[_Unit] = []
    for item in dataset.items:
        reference_answer = answers.get((reference, item.id)) if reference else None
        for system in systems:
            answer = answers[(system.name, item.id)]
            if not isinstance(answer, Answer):
                continue
            if dataset.metric == "judge":
                units.append(
                    _Unit(
                        system.name,
                        item.id,
                        "grading",
                        (judge.key, system.key, item.id),
                        _grade(judge, item, answer),
                    )
                )
            if (
                reference is not None
                and system.name != reference
                and isinstance(reference_answer, Answer)
            ):
                units.append(
                    _Unit(
                        system.name,
                        item.id,
                        "comparison",
                        (judge.key, system.key, keys[reference], item.id),
                        _compare(judge, item, answer, reference_answer),
                    )
                )
    if not units:
        return {}, {}, []
    bar = Progress(len(units), label="judge", stream=progress)
    outcomes = _run_units(units, cache, concurrency, bar)
    gradings: dict[tuple[str, str], Grading] = {}
    comparisons: dict[tuple[str, str], Comparison] = {}
    errors: list[str] = []
    for unit, outcome in zip(units, outcomes, strict=True):
        if not isinstance(outcome, dict):
            errors.append(f"{unit.label} ({unit.kind}): {outcome}")
            continue  # left unjudged; retried on the next run
        result = result_from_dict(outcome)
        where = (unit.system, unit.item_id)
        if isinstance(result, Grading):
            gradings[where] = result
        else:
            comparisons[where] = result
    return gradings, comparisons, errors


def _grade(judge: Judge, item: Item, answer: Answer) -> Callable[[], Any]:
    return lambda: result_to_dict(judge.grade(item, answer.turns))


def _compare(judge: Judge, item: Item, answer: Answer, reference: Answer) -> Callable[[], Any]:
    return lambda: result_to_dict(judge.compare(item, answer.turns, reference.turns))


def _run_units(
    units: Sequence[_Unit], cache: ResultCache, concurrency: int, bar: Progress
) -> list[Any]:
    """Each unit's cached or computed value, or an error string; computed values are cached."""
    outcomes: list[Any] = [None] * len(units)
    pending = []
    for index, unit in enumerate(units):
        value = cache.get(unit.kind, unit.key)
        if value is not None:
            outcomes[index] = value
            bar.advance(cached=True)
        else:
            pending.append(index)

    def work(index: int) -> Any:
        unit = units[index]
        try:
            value = unit.compute()
        except Exception as exc:  # recorded for this unit; the run goes on
            return f"{type(exc).__name__}: {exc}"
        cache.put(unit.kind, unit.key, value)
        return value

    def finish(index: int, outcome: Any) -> None:
        outcomes[index] = outcome
        note = units[index].label + ("" if isinstance(outcome, dict) else " FAILED")
        bar.advance(note=note)

    try:
        if concurrency <= 1:
            for index in pending:
                finish(index, work(index))
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures: dict[Future[Any], int] = {pool.submit(work, i): i for i in pending}
                try:
                    for future in as_completed(futures):
                        finish(futures[future], future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return outcomes
