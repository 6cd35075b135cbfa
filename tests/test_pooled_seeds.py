"""``experiments/pooled_seeds.py``: per-seed and pooled tables from an experiment's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.pooled_seeds import main
from moa_graph.evaluation import load_dataset
from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.systems import parse_system
from tests.test_calibrate_confidence import write_sums

SYSTEMS = ["local:smollm2-135m", "self-moa:local:smollm2-135m,n=3,aggregation=vote,name=vote"]


def fill(folder: Path, data: Path, right: dict[tuple[str, int], set[int]]) -> None:
    """Answers of each (spec, seed), right on the item numbers given, stored under the keys
    ``moa-graph eval`` gives them."""
    cache = ResultCache(folder / "cache.jsonl")
    dataset = load_dataset(f"jsonl:{data}").subset(6, 0)
    for (spec, seed), good in right.items():
        system = parse_system(spec, max_tokens=320, seed=seed, answer_extractor="number")
        for n, item in enumerate(dataset.items):
            text = "The answer is 9." if n in good else f"The answer is {10 * seed + 7}."
            cache.put("answer", (system.key, item.id),
                      {"turns": [text], "usage": {}, "wall_s": 1.0, "calls": 3 if "vote" in spec
                       else 1, "model_s": 2.0})  # fmt: skip


def test_each_seed_and_both_pooled_against_the_best_single_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 6)
    single, vote = SYSTEMS
    fill(tmp_path, data, {(single, 1): {0, 1}, (single, 2): {0},
                          (vote, 1): {0, 1, 2, 3, 4, 5}, (vote, 2): {0, 1, 2, 3, 4}})  # fmt: skip
    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--limit", "6", "--seeds", "1", "2",
            "--systems", *SYSTEMS]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    accuracy, against = out.split("Against smollm2-135m", 1)
    smollm, voted = (line for line in accuracy.splitlines() if line.startswith(("| smollm", "| v")))
    assert smollm.startswith("| smollm2-135m | 33.3 [") and "| 16.7 [" in smollm
    assert "| 25.0 [" in smollm and smollm.endswith("| 1.0 | 2 |")  # 3 of 12 draws right
    assert voted.startswith("| vote | 100.0 [") and "| 91.7 [" in voted and "| 3.0 | 2 |" in voted
    vote_row = next(line for line in against.splitlines() if line.startswith("| vote"))
    # seed 1: 4 wins, 0 losses (McNemar p = 0.125); seed 2: 4 / 0; pooled: 8 / 0 over 6 items,
    # every item with a win but item 0 -> signs of 5 items: p = 2 / 32
    assert "4 / 0, p = 0.12" in vote_row and "8 / 0, p = 0.062" in vote_row
    # the single model's wrong answers read differently under each seed (items 1 to 5), its
    # right / wrong changes on item 1 only; the vote's text and right / wrong change on item 5
    between = out.split("Between the seeds", 1)[1]
    assert "| smollm2-135m | 5 | 1 |" in between and "| vote | 1 | 1 |" in between


def test_missing_answers_are_reported_not_pooled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 6)
    fill(tmp_path, data, {(SYSTEMS[0], 1): {0}})
    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--limit", "6", "--seeds", "1", "2",
            "--systems", SYSTEMS[0]]  # fmt: skip
    assert main(argv) == 1
    assert "6 answers missing" in capsys.readouterr().err
