"""The ``moa-graph`` command against a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_graph.cli import main
from moa_graph.testing import ModelScript, OpenAICompatibleServer

MIXTURE = [
    "--proposer",
    "openai:p1",
    "--proposer",
    "openai:p2",
    "--aggregator",
    "openai:agg",
    "--layers",
    "2",
]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="Golden Gate Park"),
        "p2": ModelScript(reply="Alcatraz island"),
        "agg": ModelScript(reply="Visit the park and the island."),
    }
    with OpenAICompatibleServer(scripts=scripts) as running:
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-placeholder")
        monkeypatch.delenv("OPENAI_API_BASE", raising=False)
        yield running


def test_ask_streams_the_answer_and_reports_progress(
    server: OpenAICompatibleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", *MIXTURE, "--show-proposals", "Fun in SF?"]) == 0
    out, err = capsys.readouterr()
    assert out == "Visit the park and the island.\n"
    assert "layer 1 | p1: running" in err and "layer 1 | p2: done in" in err
    assert "layer 1 done: 2 answered, 0 failed" in err
    assert "aggregating with agg" in err
    assert "Golden Gate Park" in err  # --show-proposals
    assert server.request_count() == 3


def test_ask_json_is_machine_readable(
    server: OpenAICompatibleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", *MIXTURE, "--json", "Fun in SF?"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] == "Visit the park and the island."
    assert [p["text"] for p in result["proposals"]] == ["Golden Gate Park", "Alcatraz island"]
    assert result["usage"]["total_tokens"] > 0 and result["model"] == "moa:agg"
    assert "sk-test-placeholder" not in json.dumps(result)


def test_config_file_recipe(
    server: OpenAICompatibleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'aggregator = "openai:agg"\nlayers = 2\n'
        'proposers = ["openai:p1", { model = "openai:p2", samples = 2, name = "two" }]\n'
    )
    assert main(["ask", "--config", str(recipe), "--json", "Q?"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["proposer"] for p in result["proposals"]] == ["p1", "two #1", "two #2"]


def test_chat_keeps_the_conversation(
    server: OpenAICompatibleServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = iter(["first question", "second question", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", *MIXTURE]) == 0
    (second_turn,) = [r for r in server.requests_for("p1") if len(r.messages) > 1]
    assert [m["role"] for m in second_turn.messages] == ["user", "assistant", "user"]
    assert second_turn.messages[1]["content"] == "Visit the park and the island."


def test_chat_on_a_kept_thread_goes_on_later(
    server: OpenAICompatibleServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    argv = ["chat", *MIXTURE, "--checkpoint", f"sqlite:///{tmp_path / 'chats.db'}"]
    lines = iter(["first question", "second question", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(argv) == 0
    (thread,) = re.findall(r"thread: (\w+) \(go on with it later", capsys.readouterr().err)

    lines = iter(["third question", "/reset", "a new conversation", "/exit"])  # another session
    assert main([*argv, "--thread", thread]) == 0
    err = capsys.readouterr().err
    assert f"thread: {thread}, going on after 4 earlier messages" in err
    later = [r.messages for r in server.requests_for("p1")][2:]
    assert [m["role"] for m in later[0]] == ["user", "assistant", "user", "assistant", "user"]
    assert (later[0][0]["content"], later[0][-1]["content"]) == ("first question", "third question")
    assert [m["content"] for m in later[1]] == ["a new conversation"]  # /reset: a new thread
    assert len(re.findall(r"thread: \w+", err)) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", *MIXTURE, "--thread", "t1"], "--thread: give the --checkpoint"),
        (["chat", *MIXTURE, "--checkpoint", "mysql://db"], "checkpoint: must be one of"),
        (["chat", *MIXTURE, "--checkpoint", "memory"], "keeps nothing once the command ends"),
        (
            ["ask", "--proposer", "nosuch:x", "--aggregator", "openai:agg", "Q"],
            "unknown provider 'nosuch'",
        ),
        (["ask", "--config", "/nonexistent/recipe.toml", "Q"], "config: cannot read"),
        (["ask", "--preset", "local", "--config", "x.toml", "Q"], "not both"),
        (["ask", *MIXTURE, "--layers", "1", "Q"], "layers: must be at least 2"),
        (["ask", *MIXTURE, "--resume"], "--resume: give the --checkpoint and the --thread"),
        (["ask", *MIXTURE], "give a question, or --resume a thread"),
        (["ask", *MIXTURE, "--checkpoint", "mysql://db", "Q"], "checkpoint: must be one of"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    server: OpenAICompatibleServer,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_key_is_a_usage_error(
    server: OpenAICompatibleServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["ask", *MIXTURE, "Q"]) == 2
    err = capsys.readouterr().err
    assert "proposers[0]: cannot create chat model 'openai:p1'" in err
    assert err.count("\n") == 1


def test_a_failing_run_is_one_line_with_exit_code_1(
    server: OpenAICompatibleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add_faults("agg", "http_401")
    assert main(["ask", *MIXTURE, "--timeout", "5", "Q"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("moa-graph: error: AggregatorError: aggregator agg (agg) failed")
    assert "Traceback" not in err


def test_ask_with_a_strategy_and_a_seed(
    server: OpenAICompatibleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # the ranker's reply names no candidate, so the first reference is the answer, verbatim
    assert main(["ask", *MIXTURE, "--aggregation", "rank", "--seed", "3", "Fun in SF?"]) == 0
    out, err = capsys.readouterr()
    assert out == "Golden Gate Park\n"
    assert "(3 calls" in err
    seeds = {r.model: r.params.get("seed") for r in server.requests()}
    assert seeds == {"p1": 3, "p2": 3, "agg": 3}
    with pytest.raises(SystemExit) as refused:
        main(["ask", *MIXTURE, "--aggregation", "mean", "Hi"])
    assert refused.value.code == 2
    assert "invalid choice: 'mean'" in capsys.readouterr().err


def test_a_run_that_stopped_is_finished_from_its_thread(
    server: OpenAICompatibleServer, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add_faults("p2", "http_400")  # once: the layer falls below quorum, the run fails
    thread = f"cli-{uuid.uuid4().hex}"
    argv = ["ask", *MIXTURE, "--min-proposals", "2", "--max-retries", "0",
            "--checkpoint", postgres_url, "--thread", thread]  # fmt: skip
    assert main([*argv, "Fun in SF?"]) == 1
    assert f"--thread {thread} --resume" in capsys.readouterr().err
    assert main([*argv, "--json", "--resume"]) == 0  # another process could do the same
    result = json.loads(capsys.readouterr().out)
    assert (result["question"], result["answer"]) == (
        "Fun in SF?",
        "Visit the park and the island.",
    )
    assert [p["status"] for p in result["proposals"]] == ["answered", "answered"]
    assert (server.request_count("p1"), server.request_count("p2")) == (1, 2)  # p1 paid once
    assert main([*argv, "--resume"]) == 2
    assert "has no unfinished run" in capsys.readouterr().err


def test_python_dash_m_moa_graph_is_the_same_command() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "moa_graph", "settings"], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "aggregation" in done.stdout and "RuntimeWarning" not in done.stderr


def test_progress_lines_wait_until_a_streaming_answer_ends() -> None:
    """Staircase streaming starts the answer while proposers still write: their progress lines
    must not cut through the answer on a terminal."""
    import io

    from langchain_core.messages import AIMessage

    from moa_graph.cli.console import ProgressPrinter, RunOutcome

    err, out = io.StringIO(), io.StringIO()
    printer = ProgressPrinter(err=err, out=out)
    started = {"moa_event": "proposal_started", "layer": 1, "index": 0, "proposer": "a"}
    finished = {"moa_event": "proposal_finished", "layer": 1, "index": 0, "proposer": "a",
                "latency_s": 2.0}  # fmt: skip
    printer.event(started)
    assert err.getvalue() == "  layer 1 | a: running\n"  # before the answer: at once
    printer.token("Par")
    printer.event(finished)
    printer.token("is")
    assert err.getvalue() == "  layer 1 | a: running\n" and out.getvalue() == "Paris"
    printer.finish(RunOutcome(AIMessage("Paris"), [], 1.0), streamed=True)
    assert out.getvalue() == "Paris\n"
    assert err.getvalue().splitlines()[1] == "  layer 1 | a: done in 2.0s"
