"""Write model outputs in the formats other evaluation tools read.

- AlpacaEval: ``model_outputs.json``, a JSON list of ``{"instruction", "output", "generator",
  "dataset"}`` (AlpacaEval is single-turn: the first turn of each item).
- MT-Bench (FastChat ``llm_judge``): one JSON line per question, ``{"question_id", "answer_id",
  "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}``, in
  ``model_answer/<model>.jsonl``, ready for FastChat's ``gen_judgment.py``.

Example:
    >>> from moa_graph.evaluation.datasets import Dataset, Item
    >>> from moa_graph.evaluation.runner import ItemResult, Experiment
    >>> from moa_graph.evaluation.scoring import Score
    >>> from moa_graph.evaluation.systems import Answer, System
    >>> ds = Dataset("mtbench", (Item(id="mtbench/81", turns=("q1", "q2"),
    ...                               meta={"question_id": 81}),), "judge")
    >>> answer = Answer(("a1", "a2"), {}, wall_s=1.0, calls=2)
    >>> exp = Experiment(ds, (System("moa", {}, print),),
    ...                  (ItemResult("moa", "mtbench/81", answer, Score(None)),))
    >>> alpaca_eval_outputs(exp, "moa")
    [{'instruction': 'q1', 'output': 'a1', 'generator': 'moa', 'dataset': 'mtbench'}]
    >>> record = mtbench_answers(exp, "moa")[0]
    >>> record["question_id"], record["choices"]
    (81, [{'index': 0, 'turns': ['a1', 'a2']}])
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moa_graph.evaluation.datasets import Item
from moa_graph.evaluation.runner import Experiment
from moa_graph.evaluation.systems import Answer


def safe_filename(name: str) -> str:
    """A system name usable as a file name.

    Example:
        >>> safe_filename("self-moa:Qwen/Qwen2.5 x6")
        'self-moa_Qwen_Qwen2.5_x6'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "system"


def _answered(experiment: Experiment, system: str) -> Iterator[tuple[Item, Answer]]:
    """Each item ``system`` answered, with its answer, in the experiment's order."""
    for result in experiment.for_system(system):
        if result.answer is not None:
            yield experiment.item(result.item_id), result.answer


def alpaca_eval_outputs(experiment: Experiment, system: str) -> list[dict[str, Any]]:
    """AlpacaEval records of one system's answered items (first turn only)."""
    return [
        {
            "instruction": item.turns[0],
            "output": answer.turns[0],
            "generator": system,
            "dataset": experiment.dataset.name,
        }
        for item, answer in _answered(experiment, system)
    ]


def _answer_id(system: str, item_id: str) -> str:
    return hashlib.sha256(f"{system}\0{item_id}".encode()).hexdigest()[:22]


def mtbench_answers(experiment: Experiment, system: str) -> list[dict[str, Any]]:
    """MT-Bench answer records of one system's answered items (every turn).

    ``question_id`` is MT-Bench's integer id where the item has one, else the item id.
    """
    now = time.time()
    return [
        {
            "question_id": item.meta.get("question_id", item.id),
            "answer_id": _answer_id(system, item.id),
            "model_id": system,
            "choices": [{"index": 0, "turns": list(answer.turns)}],
            "tstamp": now,
        }
        for item, answer in _answered(experiment, system)
    ]


def write_exports(experiment: Experiment, out_dir: str | Path) -> list[Path]:
    """Write every system's outputs in both formats under ``out_dir``; returns the files.

    Layout: ``alpaca_eval/<system>/model_outputs.json`` and
    ``mt_bench/model_answer/<system>.jsonl``.
    """
    out_dir = Path(out_dir)
    written = []
    for system in experiment.systems:
        name = safe_filename(system.name)
        alpaca = out_dir / "alpaca_eval" / name / "model_outputs.json"
        alpaca.parent.mkdir(parents=True, exist_ok=True)
        alpaca.write_text(
            json.dumps(alpaca_eval_outputs(experiment, system.name), indent=2, ensure_ascii=False)
            + "\n",
            encoding="utf-8",
        )
        mtbench = out_dir / "mt_bench" / "model_answer" / f"{name}.jsonl"
        mtbench.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps(r, ensure_ascii=False) for r in mtbench_answers(experiment, system.name)
        ]
        mtbench.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written += [alpaca, mtbench]
    return written
