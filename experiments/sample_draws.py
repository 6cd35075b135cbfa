"""What an experiment's answers show item by item: each sample's accuracy by its place, how often
two samples agree, the items a vote sent to its aggregator, and answers cut at the token limit.

``--system`` names a mixture with samples in its first layer (a Self-MoA vote): for each sample
position k (seed + k), the share of items it got right and, for each pair of positions, the
share of items where both gave the same readable answer. A sample's answer is the one its vote
recorded (``moa_votes``), else the one the evaluation reads from its text. Samples drawn
independently give every position about the same accuracy and every pair about the same
agreement; a seed that repeats its draws on every item does not.

``--limit N`` restricts every report to the items of the ``N``-item draw (``--seed``) beyond the
``--beyond`` draw; without it, ``--system`` covers every item the system answered. The other
reports need ``--limit``:

- ``--ties VOTE``: the items where VOTE made more calls than it has samples (its aggregator
  settled a tie or an unreadable vote), and how many of them each of ``--systems`` got right;
- ``--at-limit TOKENS``: how many answers of each of ``--systems`` wrote TOKENS tokens or more
  (cut by ``--max-tokens``);
- ``--discordant A B``: on how many items A was right and B wrong, and the reverse.

Run: ``python experiments/sample_draws.py experiments/arc-local --dataset arc --system
self-moa-weighted-vote-5``; ``... --limit 200 --ties self-moa-vote-5 --systems self-moa-vote-5
self-moa-weighted-vote-5``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from moa_graph.evaluation.cache import answers_by_system
from moa_graph.evaluation.datasets import Item, Metric, load_dataset
from moa_graph.evaluation.scoring import is_right, score_answer


def _proposals(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in (answer.get("extra") or [{}])[-1].get("proposals", []) if p["layer"] == 1]


def samples_of(metric: Metric, item: Item, answer: dict[str, Any]) -> list[str | None]:
    """The final answers of a mixture's first-layer samples: as its vote recorded them, else read
    from the samples' texts as the evaluation reads an answer."""
    recorded = (answer.get("extra") or [{}])[-1].get("moa_votes")
    if recorded and recorded.get("answers"):
        return list(recorded["answers"])
    return [score_answer(metric, item, p.get("text") or "").extracted for p in _proposals(answer)]


def sample_positions(
    items: Mapping[str, Item], metric: Metric, answers: Mapping[str, dict[str, Any]]
) -> tuple[int, list[float], dict[tuple[int, int], float]]:
    """Items with samples, each sample position's accuracy, each pair of positions' agreement."""
    drawn = [(item, samples) for item, answer in answers.items()
             if (samples := samples_of(metric, items[item], answer))]  # fmt: skip
    if not drawn:
        raise ValueError("no answer of this system has first-layer samples")
    width = min(len(samples) for _, samples in drawn)
    accuracy = [sum(is_right(metric, items[item], samples[k]) for item, samples in drawn)
                / len(drawn) for k in range(width)]  # fmt: skip
    agreement = {
        (i, j): sum(s[i] is not None and s[i] == s[j] for _, s in drawn) / len(drawn)
        for i, j in combinations(range(width), 2)
    }
    return len(drawn), accuracy, agreement


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the experiment's folder (its cache.jsonl)")
    parser.add_argument("--dataset", required=True, help="gsm8k, arc or jsonl:PATH")
    parser.add_argument("--system", help="a mixture with first-layer samples")
    parser.add_argument("--limit", type=int, help="the draw the reports cover")
    parser.add_argument("--beyond", type=int, default=0, help="leave out this smaller draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", default=[], help="for --ties and --at-limit")
    parser.add_argument("--ties", metavar="VOTE", help="the items VOTE's aggregator settled")
    parser.add_argument("--at-limit", type=int, metavar="TOKENS", help="answers this long")
    parser.add_argument("--discordant", nargs=2, metavar=("A", "B"))
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    by_id = {item.id: item for item in dataset}
    named = [n for n in (args.system, args.ties, *args.systems, *(args.discordant or [])) if n]
    answers = answers_by_system(args.folder / "cache.jsonl", named)
    if missing := [name for name in named if not answers[name]]:
        print(f"no answers of {missing[0]!r} in {args.folder}", file=sys.stderr)
        return 1
    items = None
    if args.limit is not None:
        earlier = set(dataset.subset(args.beyond, seed=args.seed).ids()) if args.beyond else set()
        items = [i for i in dataset.subset(args.limit, seed=args.seed).ids() if i not in earlier]
    if args.system:
        own = answers[args.system]
        chosen = own if items is None else {i: own[i] for i in items if i in own}
        count, accuracy, agreement = sample_positions(by_id, dataset.metric, chosen)
        print(f"{args.system}: {count} items with samples")
        positions = "  ".join(f"{k}: {100 * a:.1f}%" for k, a in enumerate(accuracy))
        pairs = "  ".join(f"{i}-{j}: {100 * a:.0f}%" for (i, j), a in agreement.items())
        print(f"right, by sample position: {positions}")
        print(f"same answer, by pair: {pairs}")
    if not (args.ties or args.at_limit or args.discordant):
        return 0
    if items is None:
        print("--ties, --at-limit and --discordant need --limit", file=sys.stderr)
        return 2
    span = f"{len(items)} items of the {args.limit}-item draw" + (
        f" beyond the first {args.beyond}" if args.beyond else "")  # fmt: skip

    def right(system: str, item: str) -> bool:
        answer = answers[system].get(item)
        return answer is not None and is_right(dataset.metric, by_id[item], answer["turns"][-1])

    if args.ties:
        vote = answers[args.ties]
        tied = [i for i in items if i in vote and vote[i]["calls"] > len(_proposals(vote[i]))]
        counts = ", ".join(f"{s} {sum(right(s, i) for i in tied)}" for s in args.systems)
        print(f"{args.ties} asked its aggregator on {len(tied)} of {span}; right on them: {counts}")
    if args.at_limit:
        for system in args.systems:
            lengths = [sum(tokens[1] for tokens in answers[system][i]["usage"].values())
                       for i in items if i in answers[system]]  # fmt: skip
            cut = sum(length >= args.at_limit for length in lengths)
            print(f"{system}: {cut} of {len(lengths)} answers wrote {args.at_limit} tokens or more")
    if args.discordant:
        a, b = args.discordant
        both = [i for i in items if i in answers[a] and i in answers[b]]
        only_a = sum(right(a, i) and not right(b, i) for i in both)
        only_b = sum(right(b, i) and not right(a, i) for i in both)
        print(
            f"over {len(both)} items: {a} right and {b} wrong on {only_a}, the reverse on {only_b}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
