"""Model seconds per item of several systems over the very same items, from an experiment's answers.

The summary's "model s" averages each system over its own timed items, which differ when some
answers were made by an earlier version (untimed, or timed on a slower engine). This script
takes the items of the ``--limit`` draw that are not in the ``--beyond`` draw (say, the items a
later stage added), keeps those where every named system has a timed answer, and prints each
system's mean model seconds and its ratio to the first system's.

Run: ``python experiments/model_seconds.py experiments/gsm8k-local --dataset gsm8k --limit 200
--beyond 60 --systems qwen2.5-coder-1.5b self-moa-vote-5 self-moa-weighted-vote-5``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from moa_graph.evaluation.cache import answers_by_system
from moa_graph.evaluation.datasets import load_dataset


def timed_answers(cache: Path, systems: Sequence[str]) -> dict[str, dict[str, float]]:
    """System name -> item id -> the model seconds of its answer (untimed answers left out).

    Raises:
        ValueError: a system answered under two configurations (two keys), which would mix.
    """
    return {
        system: {item: float(answer["model_s"]) for item, answer in answers.items()
                 if isinstance(answer.get("model_s"), int | float)}
        for system, answers in answers_by_system(cache, systems).items()
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the experiment's folder (its cache.jsonl)")
    parser.add_argument("--dataset", required=True, help="gsm8k, arc or jsonl:PATH")
    parser.add_argument("--limit", type=int, required=True, help="the draw's size")
    parser.add_argument("--beyond", type=int, default=0, help="leave out this smaller draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", required=True, help="names; the first is 1x")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    earlier = set(dataset.subset(args.beyond, seed=args.seed).ids()) if args.beyond else set()
    items = [i for i in dataset.subset(args.limit, seed=args.seed).ids() if i not in earlier]
    seconds = timed_answers(args.folder / "cache.jsonl", args.systems)
    common = [item for item in items if all(item in seconds[s] for s in args.systems)]
    if not common:
        print("no item has a timed answer of every system", file=sys.stderr)
        return 1
    print(f"{len(common)} of {len(items)} items (the {args.limit}-item draw beyond the first "
          f"{args.beyond}) with a timed answer of every system")  # fmt: skip
    means = {s: sum(seconds[s][item] for item in common) / len(common) for s in args.systems}
    first = means[args.systems[0]]
    for system, mean in means.items():
        print(f"{system}: {mean:.1f} model s per item, {mean / first:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
