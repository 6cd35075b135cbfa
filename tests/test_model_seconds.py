"""``experiments/model_seconds.py``: systems' model seconds compared over the same items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.model_seconds import main
from moa_graph.evaluation import load_dataset
from tests.test_calibrate_confidence import write_sums


def _answer(system: str, item: str, seconds: float | None) -> str:
    value = {"turns": ["9"], "model_s": seconds}
    return json.dumps({"kind": "answer", "key": [f"{system}#abc", item], "value": value}) + "\n"


def test_systems_are_compared_on_the_later_items_every_one_has_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 6)
    dataset = load_dataset(f"jsonl:{data}")
    first_two = set(dataset.subset(2, seed=0).ids())
    later = [i for i in dataset.subset(5, seed=0).ids() if i not in first_two]
    lines = [_answer("one", item, 10.0) for item in dataset.ids()]  # every item, even left out
    lines += [_answer("vote", item, 100.0) for item in first_two]  # not compared: too early
    lines += [_answer("vote", later[0], 30.0), _answer("vote", later[1], 20.0),
              _answer("vote", later[2], None)]  # untimed: the item is left out  # fmt: skip
    (tmp_path / "cache.jsonl").write_text("".join(lines))
    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--limit", "5", "--beyond", "2",
            "--systems", "one", "vote"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of 3 items" in out
    assert "one: 10.0 model s per item, 1.00x" in out
    assert "vote: 25.0 model s per item, 2.50x" in out


def test_a_system_answered_under_two_configurations_is_refused(tmp_path: Path) -> None:
    data = write_sums(tmp_path, 1)
    lines = [_answer("vote", "s0", 1.0), _answer("vote", "s0", 2.0).replace("#abc", "#def")]
    (tmp_path / "cache.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match="2 configurations"):
        main([str(tmp_path), "--dataset", f"jsonl:{data}", "--limit", "1", "--systems", "vote"])
