"""``experiments/sample_draws.py``: samples' accuracy by place and agreement by pair, a vote's
tied items, answers cut at the token limit and discordant items, from stored answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.sample_draws import main
from tests.test_calibrate_confidence import write_sums


def _answer(system: str, item: str, reply: str, **value: Any) -> str:
    value = {"turns": [reply], "calls": 1, "usage": {"m": [10, 5]}, **value}
    record = {"kind": "answer", "key": [f"{system}#abc", f"sums/{item}"], "value": value}
    return json.dumps(record) + "\n"


def _vote(item: str, answers: list[str | None], calls: int) -> str:
    extra = [{"proposals": [{"layer": 1}] * len(answers),
              "moa_votes": {"answers": answers, "confidences": [0.5] * len(answers)}}]  # fmt: skip
    return _answer("vote", item, f"The answer is {answers[0]}.", calls=calls, extra=extra)


def test_sample_places_pairs_ties_cut_answers_and_discordant_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 4)  # every item's right answer is 9
    lines = [
        _vote("s0", ["9", "9", "7", None], calls=4),
        _vote("s1", ["9", "8", "7", "7"], calls=5),  # a tie: the aggregator was asked
        _vote("s2", ["9", "8", "9", "8"], calls=5),  # another
        _vote("s3", ["9", "9", "9", "9"], calls=4),
        *(_answer("one", f"s{i}", "9" if i < 2 else "3", usage={"m": [10, 64 * i]})
          for i in range(4)),
    ]  # fmt: skip
    (tmp_path / "cache.jsonl").write_text("".join(lines))
    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--system", "vote", "--limit", "4",
            "--ties", "vote", "--systems", "vote", "one", "--at-limit", "128",
            "--discordant", "vote", "one"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "vote: 4 items with samples" in out
    assert "0: 100.0%  1: 50.0%  2: 50.0%  3: 25.0%" in out
    assert "0-1: 50%" in out and "0-3: 25%" in out and "2-3: 50%" in out
    assert "vote asked its aggregator on 2 of 4 items of the 4-item draw; right on them: " \
        "vote 2, one 1" in out  # fmt: skip
    assert "one: 2 of 4 answers wrote 128 tokens or more" in out
    assert "vote right and one wrong on 2, the reverse on 0" in out


def test_samples_a_vote_did_not_record_are_read_from_their_texts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 2)
    texts = [["The answer is 9.", "It is 4."], ["So 9.", "Hence 9."]]
    lines = [_answer("vote", f"s{i}", "9", extra=[{"proposals": [
                 {"layer": 1, "text": t} for t in item] + [{"layer": 2, "text": "9"}]}])
             for i, item in enumerate(texts)]  # fmt: skip
    (tmp_path / "cache.jsonl").write_text("".join(lines))
    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--system", "vote", "--limit", "1"]
    assert main(argv) == 0  # the 1-item draw: one of the two items
    assert "vote: 1 items with samples" in capsys.readouterr().out
    assert main(argv[:-2]) == 0
    out = capsys.readouterr().out
    assert "0: 100.0%  1: 50.0%" in out and "0-1: 50%" in out


def test_a_system_with_no_answers_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 1)
    (tmp_path / "cache.jsonl").write_text(_answer("one", "s0", "9"))
    assert main([str(tmp_path), "--dataset", f"jsonl:{data}", "--system", "vote"]) == 1
    assert "no answers of 'vote'" in capsys.readouterr().err
