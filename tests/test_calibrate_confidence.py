"""``experiments/calibrate_confidence.py``: a vote's recorded confidences, weighed again at
each temperature on the items beyond the test draw, with no model call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.calibrate_confidence import main, vote_records
from moa_graph import ChatMixtureOfAgents
from moa_graph.evaluation import load_dataset, moa, run_experiment
from moa_graph.evaluation.cache import ResultCache
from tests.fakes import ScriptedChatModel
from tests.test_weighted_vote import CheapConfidence


def write_sums(folder: Path, count: int) -> Path:
    """A JSONL data set of ``count`` sums (item ids ``sums/s0``, ``sums/s1``, ...), each
    answered 9."""
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "question": f"{i} + 9 - {i}?",
                                        "answer": "9"}) + "\n" for i in range(count)))  # fmt: skip
    return data


def test_a_temperature_is_chosen_on_held_out_items_from_the_votes_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sums(tmp_path, 4)
    # two unsure samples say 7, one sure sample says 9 (right): only a low temperature is right
    proposers = [CheapConfidence(reply="The answer is 7.", mean_logprob=-1.0),
                 CheapConfidence(reply="It is 7.", mean_logprob=-1.2),
                 CheapConfidence(reply="The answer is 9.", mean_logprob=-0.05)]  # fmt: skip
    vote = ChatMixtureOfAgents(proposers=proposers, aggregator=ScriptedChatModel(), layers=2,
                               aggregation="vote", answer_extractor="number")  # fmt: skip
    cache = ResultCache(tmp_path / "cache.jsonl")
    run_experiment(load_dataset(f"jsonl:{data}"), [moa(vote, name="vote-3")], cache=cache,
                   progress=None)  # fmt: skip

    votes = vote_records(tmp_path / "cache.jsonl", "vote-3")
    assert len(votes) == 4 and all(v["answers"] == ["7", "7", "9"] for v in votes.values())

    argv = [str(tmp_path), "--dataset", f"jsonl:{data}", "--system", "vote-3",
            "--test-limit", "2", "--temperatures", "0.25", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 held-out items (2 test items left out); 0 with a tied" in out
    assert "majority: 0.0%" in out and "T=0.25: 100.0%" in out and "T=2: 0.0%" in out
    assert out.strip().endswith("best: T=0.25")

    assert main([*argv, "0.1"]) == 0  # two temperatures tie for the best: both are named
    assert capsys.readouterr().out.strip().endswith("best: T=0.25, T=0.1 (tied)")
