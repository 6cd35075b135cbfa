"""``main_eval`` end to end against a loopback OpenAI-compatible server (real ChatOpenAI calls)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.globals import get_llm_cache

from moa_graph.evaluation.cli import main_eval
from moa_graph.testing import ModelScript, OpenAICompatibleServer

ARITHMETIC = Path(__file__).parent / "data" / "eval_arithmetic.jsonl"


def _last_user(request: dict[str, Any]) -> str:
    return [m["content"] for m in request["messages"] if m["role"] == "user"][-1]


def solve(request: dict[str, Any]) -> str:
    """Adds correctly, except 3 + 3."""
    a, b = map(int, re.findall(r"(\d+) \+ (\d+)", _last_user(request))[0])
    return f"Adding gives {a + b if a != 3 else 7}.\nThe answer is {a + b if a != 3 else 7}"


def judge(request: dict[str, Any]) -> str:
    system = request["messages"][0]["content"]
    if "[[A]]" in system:  # pairwise: prefer the sunny answer, wherever it is shown
        text = _last_user(request)
        return "[[A]]" if text.index("It is sunny") < text.index("Clouds.") else "[[B]]"
    return "Rating: [[7]]"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "solver": ModelScript(reply=solve),
        "lazy": ModelScript(reply="I do not know."),
        "ranker": ModelScript(reply="model_2"),
        "sunny": ModelScript(reply="It is sunny and warm."),
        "cloudy": ModelScript(reply="Clouds."),
        "judge": ModelScript(reply=judge),
    }
    with OpenAICompatibleServer(scripts=scripts) as running:
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-placeholder")
        monkeypatch.delenv("OPENAI_API_BASE", raising=False)
        for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_TRACING"):
            monkeypatch.delenv(name, raising=False)
        yield running


def test_eval_on_jsonl_writes_reports_exports_and_resumes(
    server: OpenAICompatibleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--dataset", f"jsonl:{ARITHMETIC}",
        "--systems", "single:openai:solver", "single:openai:lazy,name=lazy",
        "best-of-n:openai:solver,n=2,ranker=openai:ranker",
        "--out", str(tmp_path),
        "--prices", "openai:solver=1,2", "lazy=0,0", "ranker=0.5,0.5",
        "--no-plot",
    ]  # fmt: skip
    assert main_eval(argv) == 0
    out, err = capsys.readouterr()
    # best-of-2's first draw (seed 0) is the single solver's call, shared through calls.sqlite
    assert server.request_count("solver") == 4 + 4 and server.request_count("ranker") == 4
    assert "shared model calls: 4 reused" in err
    assert get_llm_cache() is None  # the experiment's call cache is not left behind
    assert "| solver | single | 75.0 [" in out and "| lazy | single | 0.0 [" in out
    assert "| $ / answer |" in out
    assert "answers [" in err and "12/12" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["system"] for row in summary] == ["solver", "lazy", "best-of-2-solver"]
    assert summary[0]["metrics"]["accuracy"]["value"] == 0.75
    assert summary[0]["cost"] > 0 and summary[1]["cost"] == 0
    assert (tmp_path / "summary.md").read_text() == out.rstrip("\n") + "\n"
    outputs = json.loads((tmp_path / "alpaca_eval" / "solver" / "model_outputs.json").read_text())
    assert len(outputs) == 4 and outputs[0]["generator"] == "solver"
    assert (tmp_path / "mt_bench" / "model_answer" / "best-of-2-solver.jsonl").exists()

    requests_before = server.request_count()
    assert main_eval([*argv, "--limit", "2", "--quiet"]) == 0
    assert server.request_count() == requests_before  # everything came from the cache
    out, err = capsys.readouterr()
    assert "(2 items)" in err and "answers [" not in err

    pairs = ["--pair", "lazy=solver", "--pair", "best-of-2-solver=lazy"]  # both are kept
    assert main_eval([*argv, "--report-only", "--quiet", *pairs]) == 0
    assert server.request_count() == requests_before
    assert "(4 items)" in capsys.readouterr().err
    _, lazy, best_of_2 = json.loads((tmp_path / "summary.json").read_text())
    assert (lazy["compared_with"], best_of_2["compared_with"]) == ("solver", "lazy")
    assert (lazy["compared"]["only_a"], lazy["compared"]["only_b"]) == (0, 3)
    assert "- lazy against solver: -75.0 [" in (tmp_path / "summary.md").read_text()
    summary_before, side = (tmp_path / "summary.json").read_text(), tmp_path / "side"
    one = ["--systems", "single:openai:solver", "--report-dir", str(side), "--report-only"]
    assert main_eval([*argv, *one, "--quiet"]) == 0  # the folder's caches, a report elsewhere
    assert server.request_count() == requests_before
    assert [row["system"] for row in json.loads((side / "summary.json").read_text())] == ["solver"]
    assert (side / "alpaca_eval" / "solver" / "model_outputs.json").exists()
    assert (tmp_path / "summary.json").read_text() == summary_before
    capsys.readouterr()
    with_new = [*argv, "--report-only", "--systems", "single:openai:solver", "single:openai:other"]
    assert main_eval(with_new) == 2  # "other" answered nothing yet: nothing to report
    assert "--report-only: no item of" in capsys.readouterr().err
    assert server.request_count() == requests_before


def test_items_draw_with_their_own_seeds_reproducibly_and_fixed_seeds_are_still_reported(
    server: OpenAICompatibleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moa_graph.evaluation.datasets import load_dataset
    from moa_graph.evaluation.systems import item_seed

    items = load_dataset(f"jsonl:{ARITHMETIC}").ids()
    systems = ["single:openai:solver", "self-moa:openai:solver,n=2,aggregation=vote,name=vote"]

    def seeds(*options: str, out: str) -> list[int]:
        server.reset()
        argv = ["--dataset", f"jsonl:{ARITHMETIC}", "--systems", *systems, "--out",
                str(tmp_path / out), "--no-plot", "--no-call-cache", *options]  # fmt: skip
        assert main_eval(argv) == 0
        return [r.params["seed"] for r in server.requests()]

    drawn = seeds("--seed", "5", out="a")
    # item i: the model alone draws with its seed, the vote's two samples with it and it + 1
    expected = [s for item in items for s in (item_seed(5, item), item_seed(5, item),
                                              item_seed(5, item) + 1)]  # fmt: skip
    assert sorted(drawn) == sorted(expected) and len(set(drawn)) == 2 * len(items)
    report = capsys.readouterr().out
    assert "Seeds: per-item from 5 (every system)" in report
    assert sorted(seeds("--seed", "5", out="b")) == sorted(drawn)  # a rerun: the same calls
    assert set(seeds("--seed", "6", out="c")).isdisjoint(drawn)  # another seed, other draws
    capsys.readouterr()
    assert sorted(seeds("--seed", "5", "--seed-mode", "fixed", out="d")) == sorted(
        [5, 5, 6] * len(items)
    )
    assert "Seeds: fixed 5 (every system)" in capsys.readouterr().out


def test_eval_mtbench_with_judge_grades_and_compares(
    server: OpenAICompatibleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--dataset", "mtbench", "--limit", "2",
        "--systems", "single:openai:sunny", "single:openai:cloudy",
        "--judge", "openai:judge", "--reference", "cloudy",
        "--out", str(tmp_path), "--no-plot", "--quiet",
    ]  # fmt: skip
    assert main_eval(argv) == 0
    out = capsys.readouterr().out
    # grading: 2 systems x 2 items x 2 turns; pairwise: 1 system x 2 items x 2 turns x 2 orders
    assert server.request_count("judge") == 8 + 8
    assert "| sunny | single | 7.00 [7.00, 7.00] | 100.0 [100.0, 100.0] |" in out
    assert "win rate % vs cloudy" in out
    answers = (tmp_path / "mt_bench" / "model_answer" / "sunny.jsonl").read_text().splitlines()
    assert {json.loads(line)["question_id"] for line in answers} <= set(range(81, 161))
    assert all(len(json.loads(line)["choices"][0]["turns"]) == 2 for line in answers)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "nope", "--systems", "local-tiny"], "unknown 'nope'"),
        (["--dataset", "mtbench", "--systems", "local-tiny"], "give --judge MODEL"),
        (["--dataset", "gsm8k", "--systems", "single:local:smollm2-135m,x=1"], "unknown option"),
        (["--dataset", "gsm8k", "--systems", "moa:absent-preset"], "neither a preset"),
        (["--dataset", "gsm8k", "--systems", "local-tiny", "--prices", "m=1"], "prices"),
        (
            ["--dataset", "gsm8k", "--systems", "local-tiny", "--pair", "local-tiny=x"],
            "no system is named 'x' (the systems: local-tiny)",
        ),
        (
            ["--dataset", "gsm8k", "--systems", "local-tiny", "--pair", "local-tiny"],
            "is not SYSTEM=OTHER",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_eval([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moa-graph eval: error:") and message in err


def test_missing_matplotlib_is_reported_not_fatal(
    server: OpenAICompatibleServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["--dataset", f"jsonl:{ARITHMETIC}", "--systems", "single:openai:solver"]
    assert main_eval([*argv, "--limit", "1", "--out", str(tmp_path), "--quiet"]) == 0
    assert "no plot: the quality-vs-cost plot needs matplotlib: pip install 'moa-graph[eval]'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "quality_vs_cost.png").exists()


def test_interrupt_exits_130_and_keeps_the_cache(
    server: OpenAICompatibleServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moa_graph.evaluation import systems

    calls = {"n": 0}
    real_answer = systems.System.answer

    def answer_then_interrupt(self: systems.System, item: Any) -> systems.Answer:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_answer(self, item)

    monkeypatch.setattr(systems.System, "answer", answer_then_interrupt)
    argv = ["--dataset", f"jsonl:{ARITHMETIC}", "--systems", "single:openai:solver"]
    assert main_eval([*argv, "--out", str(tmp_path), "--quiet"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(systems.System, "answer", real_answer)
    assert main_eval([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    assert server.request_count("solver") == 4


def test_langsmith_option_evaluates_offline_from_the_cache(
    server: OpenAICompatibleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dataset", f"jsonl:{ARITHMETIC}", "--systems", "single:openai:solver"]
    assert main_eval([*argv, "--limit", "2", "--out", str(tmp_path), "--quiet", "--langsmith"]) == 0
    out, err = capsys.readouterr()
    assert server.request_count("solver") == 2  # langsmith.evaluate reused the cached answers
    assert out.startswith("# eval_arithmetic: 2 items")  # langsmith's own prints go to stderr
    assert "experiment" in err


def test_shards_share_a_postgres_store_and_report_as_one_process(
    server: OpenAICompatibleServer, tmp_path: Path, postgres_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base = [
        "--dataset", f"jsonl:{ARITHMETIC}",
        "--systems", "single:openai:solver", "single:openai:lazy,name=lazy",
        "best-of-n:openai:solver,n=2,ranker=openai:ranker",
        "--no-plot", "--quiet",
    ]  # fmt: skip
    store = ["--store", postgres_database, "--out", str(tmp_path / "sharded")]
    for shard in ("1/2", "2/2"):  # two processes' shares (here one after the other)
        assert main_eval([*base, *store, "--shard", shard]) == 0
    sharded_requests = server.request_count()
    assert main_eval([*base, *store, "--shard", "1/2"]) == 0  # a shard run again: all stored
    assert server.request_count() == sharded_requests
    assert main_eval([*base, *store, "--report-only"]) == 0
    assert server.request_count() == sharded_requests  # the report makes no call
    assert "(4 items)" in capsys.readouterr().err
    server.reset()
    assert main_eval([*base, "--out", str(tmp_path / "single")]) == 0  # one process, files
    assert server.request_count() == sharded_requests  # no call made twice across shards

    def summary(folder: str) -> list[dict[str, object]]:
        rows = json.loads((tmp_path / folder / "summary.json").read_text())
        return [{k: row[k] for k in ("system", "items", "metrics", "paired", "calls")}
                for row in rows]  # fmt: skip

    assert summary("sharded") == summary("single")


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--shard", "3/2"], "--shard: must be I/N"), (["--store", "runs.db"], "postgresql://")],
)
def test_bad_store_and_shard_options_are_refused(
    option: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dataset", f"jsonl:{ARITHMETIC}", "--systems", "single:openai:solver", *option,
            "--out", str(tmp_path)]  # fmt: skip
    assert main_eval(argv) == 2
    assert message in capsys.readouterr().err
