"""Choose ``confidence_temperature`` on held-out items, from a vote's recorded confidences.

A vote that asked for log-probabilities (``self-moa:...,aggregation=vote`` on the embedded
models) records, for every item, each sample's final answer and confidence
(``moa_votes`` in the answer's ``extra``). Weighing those votes again at another temperature
costs no model call, so the temperature of ``weighted_vote`` can be chosen on items the
experiment does not report: those answered beyond the test draw (``--test-limit`` items drawn
with ``--seed``, the experiment's own ``--limit`` and ``--seed``). Then run the weighted vote
over the test items with the chosen temperature; its requests are the vote's, served from the
call cache.

An item whose weights tie goes to the plain majority's answer here, and one whose majority ties
counts as wrong (the engine would ask the aggregator in both cases); the number of such items is
printed. The figures are for choosing, not for reporting; temperatures that tie for the best
are all named.

Run: ``python experiments/calibrate_confidence.py experiments/gsm8k-local --dataset gsm8k
--system self-moa-vote-5 --test-limit 200``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from moa_graph.confidence import clear_winner, weighted_votes
from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Dataset, load_dataset
from moa_graph.evaluation.scoring import is_right

TEMPERATURES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def vote_records(cache: Path, system: str) -> dict[str, dict[str, Any]]:
    """Item id -> the ``moa_votes`` record of ``system``'s answer (votes with confidences)."""
    records: dict[str, dict[str, Any]] = {}
    for (system_key, item), answer in ResultCache(cache).items("answer"):
        if not system_key.startswith(f"{system}#"):
            continue
        extra = answer.get("extra") or [{}]
        votes = extra[-1].get("moa_votes")
        if votes and votes.get("confidences"):
            records[item] = votes
    return records


def majority(answers: Sequence[str | None]) -> str | None:
    counted = {a: answers.count(a) for a in answers if a is not None}
    return clear_winner({a: float(n) for a, n in counted.items()})


def accuracy_by_temperature(
    dataset: Dataset, votes: dict[str, dict[str, Any]], temperatures: Iterable[float]
) -> tuple[dict[str, float], int]:
    """Accuracy of the plain majority and of the weighted vote at each temperature, and the
    number of items whose majority tied."""
    if not votes:
        raise ValueError("no held-out item has a vote with confidences")
    items = {item.id: item for item in dataset}
    missing = sorted(set(votes) - set(items))
    if missing:
        raise ValueError(f"items not in the data set {dataset.name}: {missing[:3]}")
    plain = {item: majority(v["answers"]) for item, v in votes.items()}
    right = sum(is_right(dataset.metric, items[i], a) for i, a in plain.items())
    table = {"majority": right / len(votes)}
    for temperature in temperatures:
        right = 0
        for item, vote in votes.items():
            totals = weighted_votes(vote["answers"], vote["confidences"], temperature)
            answer = clear_winner(totals) or plain[item]
            right += is_right(dataset.metric, items[item], answer)
        table[f"T={temperature:g}"] = right / len(votes)
    return table, sum(answer is None for answer in plain.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the experiment's folder (its cache.jsonl)")
    parser.add_argument("--dataset", required=True, help="gsm8k, arc or jsonl:PATH")
    parser.add_argument("--system", required=True, help="the vote system's name")
    parser.add_argument("--test-limit", type=int, required=True, help="the reported items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    test = set(dataset.subset(args.test_limit, seed=args.seed).ids())
    votes = vote_records(args.folder / "cache.jsonl", args.system)
    held_out = {item: vote for item, vote in votes.items() if item not in test}
    table, ties = accuracy_by_temperature(dataset, held_out, args.temperatures)
    print(f"{len(held_out)} held-out items ({len(votes) - len(held_out)} test items left out); "
          f"{ties} with a tied or unreadable majority")  # fmt: skip
    for name, accuracy in table.items():
        print(f"{name:>10}: {100 * accuracy:.1f}%")
    weighted = {name: accuracy for name, accuracy in table.items() if name != "majority"}
    best = [name for name, accuracy in weighted.items() if accuracy == max(weighted.values())]
    print(f"best: {', '.join(best)}" + (" (tied)" if len(best) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
