"""Print the tables of an experiment answered under several seeds: each seed, and both pooled.

Usage (the figures of docs/experiments.md, "Independent draws per item"; no model is called):

    python experiments/pooled_seeds.py experiments/gsm8k-per-item --dataset gsm8k \
        --limit 200 --draw-seed 0 --seeds 1 2 --systems SPEC...

with the ``--systems`` of ``experiments/run_seeds.sh``. Each system is rebuilt from its spec and
seed as ``moa-graph eval`` builds it, so its answers are found under the same cache keys. Per
seed: accuracy with its Wilson interval, and the exact McNemar test against the best single
model. Pooled over the seeds: accuracy with an interval that resamples items (an item's draws
move together), and the exact sign-flip test over items (``moa_graph.evaluation.pooled``).
Calls and model seconds are means per answered item; "best single model" is the single model
with the highest pooled accuracy. Last, how many items' answers change between the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Item, Metric, load_dataset
from moa_graph.evaluation.pooled import pooled_accuracy, pooled_difference
from moa_graph.evaluation.report import Estimate
from moa_graph.evaluation.scoring import is_right, mcnemar, wilson_interval
from moa_graph.evaluation.systems import parse_system

EXTRACTORS = {"numeric": "number", "choice": "choice"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--systems", nargs="+", required=True)
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset).subset(args.limit, args.draw_seed)
    extractor = EXTRACTORS.get(dataset.metric)
    cache = ResultCache(args.folder / "cache.jsonl")
    right: dict[str, dict[str, list[bool]]] = {}
    texts: dict[str, dict[str, list[str]]] = {}
    costs: dict[str, tuple[float, float | None]] = {}
    for spec in args.systems:
        answers = []
        for seed in args.seeds:
            system = parse_system(spec, max_tokens=args.max_tokens, seed=seed,
                                  answer_extractor=extractor)  # fmt: skip
            answers.append({item.id: cache.get("answer", (system.key, item.id))
                            for item in dataset.items})  # fmt: skip
        name = system.name
        missing = sum(answer is None for per_seed in answers for answer in per_seed.values())
        if missing:
            print(f"{name}: {missing} answers missing; run experiments/run_seeds.sh to the end",
                  file=sys.stderr)  # fmt: skip
            return 1
        right[name] = {item.id: [_right(dataset.metric, item, seed[item.id]) for seed in answers]
                       for item in dataset.items}  # fmt: skip
        texts[name] = {item.id: [seed[item.id]["turns"][-1] for seed in answers]
                       for item in dataset.items}  # fmt: skip
        everything = [seed[item.id] for seed in answers for item in dataset.items]
        timed = [a["model_s"] for a in everything if a.get("model_s") is not None]
        costs[name] = (fmean(a["calls"] for a in everything), fmean(timed) if timed else None)
    singles = [s for s in args.systems if not s.startswith(("self-moa:", "moa:", "best-of-n:"))]
    single_names = [parse_system(s, max_tokens=args.max_tokens).name for s in singles]
    best = max(single_names, key=lambda n: pooled_accuracy(right[n]).value)
    print(_tables(right, costs, best, args.seeds, len(dataset.items)))
    if len(args.seeds) > 1:
        print(_between_seeds(right, texts))
    return 0


def _right(metric: Metric, item: Item, answer: dict[str, Any] | None) -> bool:
    return answer is not None and is_right(metric, item, answer["turns"][-1])


def _format(points: float, low: float, high: float, wins: int, losses: int, p: float) -> str:
    return f"{points:+.1f} [{low:+.1f}, {high:+.1f}]; {wins} / {losses}, p = {p:.2g}"


def _tables(
    right: dict[str, dict[str, list[bool]]],
    costs: dict[str, tuple[float, float | None]],
    best: str,
    seeds: list[int],
    items: int,
) -> str:
    head = ["system", *(f"seed {s}: accuracy % [95% CI]" for s in seeds),
            "pooled: accuracy % [95% CI]", "calls", "model s"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, results in right.items():
        cells = [name]
        for k in range(len(seeds)):
            hits = sum(results[i][k] for i in results)
            low, high = wilson_interval(hits, items)
            cells.append(Estimate(hits / items, low, high, items).format(100.0))
        cells.append(pooled_accuracy(results).format(100.0))
        calls, seconds = costs[name]
        cells += [f"{calls:.1f}", "n/a" if seconds is None else f"{seconds:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    head = ["system", *(f"seed {s}" for s in seeds), "pooled"]
    paired = [f"\nAgainst {best} (points [95% CI]; wins / losses, p: exact McNemar per seed, "
              "exact sign-flip over items pooled):\n",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for name, results in right.items():
        if name == best:
            continue
        cells = [name]
        for k in range(len(seeds)):
            test = mcnemar([results[i][k] for i in results], [right[best][i][k] for i in results])
            cells.append(_format(100 * test.difference, 100 * test.low, 100 * test.high,
                                 test.only_a, test.only_b, test.p_value))  # fmt: skip
        pooled = pooled_difference(results, right[best])
        cells.append(_format(pooled.points, pooled.low, pooled.high, pooled.wins, pooled.losses,
                             pooled.p_value))  # fmt: skip
        paired.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows + paired)


def _between_seeds(
    right: dict[str, dict[str, list[bool]]], texts: dict[str, dict[str, list[str]]]
) -> str:
    """How often a system's answer to an item changes with the seed: its text, and whether it
    is right. (A greedy model's text changes too: llama.cpp's prompt cache and batching change
    the order of floating-point operations, which decides near ties.)"""
    rows = ["\nBetween the seeds (items whose final answer's text differs, and whose right / "
            "wrong differs):\n", "| system | texts differ | right / wrong differs |",
            "|---|---|---|"]  # fmt: skip
    for name, results in right.items():
        changed = sum(len(set(seeds)) > 1 for seeds in texts[name].values())
        flipped = sum(len(set(seeds)) > 1 for seeds in results.values())
        rows.append(f"| {name} | {changed} | {flipped} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
