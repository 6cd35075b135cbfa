"""End to end on a real embedded model: ``moa-graph ask`` with the smallest local preset."""

from __future__ import annotations

import json

import pytest

from moa_graph.cli import main

pytestmark = pytest.mark.local_model


def test_ask_answers_with_the_local_tiny_mixture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--preset", "local-tiny", "--max-tokens", "24", "--json",
                 "What is the capital of France?"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["answer"].strip()
    assert [p["status"] for p in result["proposals"]] == ["answered", "answered"]
    assert all(p["text"].strip() for p in result["proposals"])
    assert result["usage"]["output_tokens"] > 0
    assert result["model"] == "moa:smollm2-135m"
    assert "layer 1 done: 2 answered, 0 failed" in err


def test_chat_streams_a_second_turn_that_sees_the_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    turns = iter(["Say hello.", "Now say goodbye.", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(turns))
    assert main(["chat", "--preset", "local-tiny", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.strip()]) >= 2
    assert err.count("aggregating with smollm2-135m") == 2
