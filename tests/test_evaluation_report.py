"""Summary table, paired tests, prices, the PNG plot, and the AlpacaEval / MT-Bench exports."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from moa_graph.evaluation.costs import Price, PriceTable, TokenUsage
from moa_graph.evaluation.datasets import Dataset, Item
from moa_graph.evaluation.exporters import (
    alpaca_eval_outputs,
    mtbench_answers,
    safe_filename,
    write_exports,
)
from moa_graph.evaluation.judge import Comparison, Grading
from moa_graph.evaluation.report import (
    MissingDependencyError,
    markdown_report,
    markdown_table,
    paired_baseline,
    paired_tests,
    plot_quality_vs_cost,
    summarize,
    summary_json,
)
from moa_graph.evaluation.runner import Experiment, ItemResult
from moa_graph.evaluation.scoring import Score
from moa_graph.evaluation.systems import Answer, System

NO_CALL = System("unused", {}, lambda messages: None)  # type: ignore[arg-type,return-value]


def _system(name: str, kind: str) -> System:
    return System(name, {"kind": kind}, NO_CALL.respond)


def gold_experiment() -> Experiment:
    """10 items: 'solo' right on 4 (single model), 'moa' right on 8 (two models)."""
    items = tuple(Item(id=f"g/{i}", turns=(f"q{i}",), gold="1") for i in range(10))
    results = []
    for i, item in enumerate(items):
        solo = Answer(("1",), {"small": TokenUsage(100, 20)}, wall_s=1.0, calls=1, model_s=0.5)
        usage = {"small": TokenUsage(300, 60), "big": TokenUsage(200, 40)}
        timed = 4.0 + i if i < 5 else None  # the mixture's calls were timed on half the items
        mix = Answer(("1",), usage, wall_s=3.0, calls=4, model_s=timed)
        results.append(ItemResult("solo", item.id, solo, Score(i < 4, "1")))
        results.append(ItemResult("moa", item.id, mix, Score(i < 8, "1")))
    results.append(ItemResult("broken", "g/0", None, Score(None), error="RuntimeError: down"))
    systems = (_system("solo", "single"), _system("moa", "moa"), _system("broken", "single"))
    return Experiment(Dataset("g", items, "numeric", source="test"), systems, tuple(results))


def test_summary_rows_accuracy_interval_and_costs_per_answer() -> None:
    solo, mix, broken = summarize(gold_experiment())
    assert (solo.system, solo.kind, solo.items, solo.answered, solo.errors) == (
        "solo",
        "single",
        10,
        10,
        0,
    )
    accuracy = mix.metrics["accuracy"]
    assert accuracy.value == 0.8 and accuracy.n == 10
    assert (round(accuracy.low, 4), round(accuracy.high, 4)) == (0.4902, 0.9433)
    assert (mix.tokens_in, mix.tokens_out, mix.calls, mix.wall_s) == (500, 100, 4, 3.0)
    assert mix.cost is None  # no prices given
    assert broken.errors == 1 and broken.answered == 0 and broken.quality is None


def test_costs_with_prices_and_missing_prices() -> None:
    prices = PriceTable({"together:small": Price(1.0, 2.0), "big": Price(10.0, 20.0)})
    solo, mix, _ = summarize(gold_experiment(), prices)
    assert solo.cost == pytest.approx((100 * 1 + 20 * 2) / 1e6)
    assert mix.cost == pytest.approx((300 + 120 + 2000 + 800) / 1e6)
    partial = PriceTable({"small": Price(1.0, 2.0)})
    assert summarize(gold_experiment(), partial)[1].cost is None
    report = markdown_report(gold_experiment(), partial)
    assert "No price for: big" in report


def test_price_specs_and_files(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"a": {"input": 1, "output": 2}, "b": [3, 4]}))
    (tmp_path / "p.toml").write_text('"openai:c" = [5, 6]\n')
    table = PriceTable.parse(
        ["x:model-d=0.5,1.5", str(tmp_path / "p.json"), str(tmp_path / "p.toml")]
    )
    assert table.price("a") == Price(1, 2) and table.price("b") == Price(3, 4)
    assert table.price("c") == Price(5, 6) and table.price("openai:c") == Price(5, 6)
    assert table.price("model-d") == Price(0.5, 1.5) and table.price("nope") is None
    assert table.cost({"a": TokenUsage(0, 0), "nope": TokenUsage(0, 0)}) == 0.0
    for bad in ("m=1", "m=a,b", "m=-1,1", str(tmp_path / "absent.json")):
        with pytest.raises(ValueError, match="prices"):
            PriceTable.parse([bad])


def test_paired_tests_against_the_best_single_model() -> None:
    tests = paired_tests(gold_experiment())  # 'solo' is the only single model with answers
    assert set(tests) == {"moa"}
    moa = tests["moa"]
    assert (moa.only_a, moa.only_b, moa.n) == (4, 0, 10)
    assert moa.p_value == pytest.approx(2 / 16)
    assert moa.difference == pytest.approx(0.4)
    assert (moa.low, moa.high) == pytest.approx((-0.0195, 0.6862), abs=1e-4)  # p = 0.125: spans 0
    assert paired_tests(gold_experiment(), baseline="moa")["solo"].only_b == 4
    assert paired_tests(gold_experiment(), baseline="moa")["solo"].difference == pytest.approx(-0.4)


def test_the_paired_baseline_is_the_most_accurate_single_model_wherever_it_is_listed() -> None:
    base = gold_experiment()
    items = base.dataset.items
    strong = [ItemResult("strong", item.id, base.results[0].answer, Score(i < 6, "1"))
              for i, item in enumerate(items)]  # fmt: skip
    systems = (base.systems[0], base.systems[1], _system("strong", "single"))
    experiment = Experiment(base.dataset, systems, base.results + tuple(strong))
    assert paired_baseline(experiment) == "strong"
    assert set(paired_tests(experiment)) == {"solo", "moa"}
    assert "Paired against strong (exact McNemar test" in markdown_report(experiment)
    no_singles = Experiment(base.dataset, (base.systems[1],), base.results)
    assert paired_baseline(no_singles) == "moa"


def test_a_pair_asked_for_is_tested_besides_the_best_single_model() -> None:
    experiment = gold_experiment()
    rows = summarize(experiment, pairs={"solo": "moa"})
    solo, moa, _ = rows
    assert solo.compared_with == "moa" and solo.compared is not None
    assert (solo.compared.only_a, solo.compared.only_b, solo.compared.n) == (0, 4, 10)
    assert moa.compared is None and moa.paired_with == "solo"  # the usual test stays
    report = markdown_report(experiment, rows=rows)
    assert "Paired as asked (`--pair`):" in report
    assert "- solo against moa: -40.0 [" in report and "wrong where it was right on 4;" in report
    assert json.loads(json.dumps(summary_json(rows)))[0]["compared"]["only_b"] == 4
    assert "Paired as asked" not in markdown_report(experiment)


def test_markdown_table_and_report() -> None:
    experiment = gold_experiment()
    prices = PriceTable({"small": Price(1.0, 2.0), "big": Price(10.0, 20.0)})
    table = markdown_table(summarize(experiment, prices), prices=True)
    header, rule, solo, mix, broken = table.splitlines()
    assert header.startswith("| system | kind | accuracy % [95% CI] | n | errors | tokens in")
    assert header.endswith("| wall s | model s | $ / answer |") and rule.count("---") == 11
    assert mix.startswith("| moa | moa | 80.0 [49.0, 94.3] | 10 | 0 | 500 | 100 | 4.0 | 3.00 |")
    assert "| 3.00 | 6.00 (5 items) |" in mix  # the mean over the timed items only, and how many
    assert solo.endswith("| 1.00 | 0.50 | 0.000140 |")
    assert "| broken | single | n/a | 0 | 1 |" in broken
    report = markdown_report(experiment)
    assert report.startswith("# g: 10 items")
    assert "Model s: the seconds of all of an item's model calls" in report
    assert "accuracy difference in points with its 95% interval, Bonett-Price" in report
    assert "- moa: +40.0 [-2.0, +68.6] on" in report
    assert "10 items; right where solo was wrong on 4 items, wrong where it was right on 0;" in (
        report
    )
    assert "1 failed answer(s); first: broken g/0: RuntimeError: down" in report
    solo_json, moa_json, _ = json.loads(json.dumps(summary_json(summarize(experiment))))
    assert moa_json["metrics"]["accuracy"]["value"] == pytest.approx(0.8)
    assert moa_json["paired_with"] == "solo" and solo_json["paired"] is None
    assert (moa_json["paired"]["only_a"], moa_json["paired"]["only_b"]) == (4, 0)


def judged_experiment() -> Experiment:
    items = tuple(
        Item(id=f"j/{i}", turns=("a", "b"), meta={"question_id": 81 + i}) for i in range(4)
    )
    results = []
    for i, item in enumerate(items):
        answer = Answer(("t1", "t2"), {"m": TokenUsage(10, 10)}, wall_s=1.0, calls=2)
        grading = Grading((float(6 + i), None), ("", ""), TokenUsage())
        comparison = Comparison((("A", "B" if i else "A"),), (("", ""),), TokenUsage())
        results.append(ItemResult("moa", item.id, answer, Score(None), None, grading, comparison))
        results.append(ItemResult("ref", item.id, answer, Score(None), None, grading, None))
    systems = (_system("moa", "moa"), _system("ref", "single"))
    return Experiment(Dataset("mt", items, "judge"), systems, tuple(results), "judge-m", "ref")


def test_judge_metrics_mt_bench_score_and_win_rate() -> None:
    moa_row, ref_row = summarize(judged_experiment())
    assert moa_row.metrics["mt_bench"].value == pytest.approx(7.5)  # mean of 6, 7, 8, 9
    assert moa_row.metrics["win_rate"].value == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    low, high = moa_row.metrics["win_rate"].low, moa_row.metrics["win_rate"].high
    assert low <= 0.875 <= high
    assert "win_rate" not in ref_row.metrics
    table = markdown_table([moa_row, ref_row], reference="ref")
    assert "| MT-Bench score [95% CI] | win rate % vs ref [95% CI] |" in table
    assert "| ref | single | 7.50 [6.50, 8.50] | n/a | 4 |" in table  # no win rate against itself
    assert "Model s:" not in markdown_report(judged_experiment())  # no answer was timed
    assert paired_tests(judged_experiment()) == {}


def test_plot_needs_matplotlib_and_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'moa-graph[eval]'")):
        plot_quality_vs_cost(summarize(gold_experiment()), tmp_path / "plot.png")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_quality_vs_cost(summarize(gold_experiment()), tmp_path / "out" / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no system"):
        plot_quality_vs_cost(summarize(gold_experiment())[2:], tmp_path / "none.png")


def test_exports_follow_alpaca_eval_and_mt_bench_formats(tmp_path: Path) -> None:
    experiment = judged_experiment()
    records = alpaca_eval_outputs(experiment, "moa")
    assert records[0] == {"instruction": "a", "output": "t1", "generator": "moa", "dataset": "mt"}
    answers = mtbench_answers(experiment, "moa")
    assert [a["question_id"] for a in answers] == [81, 82, 83, 84]
    first = answers[0]
    assert set(first) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert first["choices"] == [{"index": 0, "turns": ["t1", "t2"]}] and first["model_id"] == "moa"
    assert len({a["answer_id"] for a in answers}) == 4

    written = write_exports(experiment, tmp_path)
    assert tmp_path / "alpaca_eval" / "moa" / "model_outputs.json" in written
    loaded = json.loads((tmp_path / "alpaca_eval" / "moa" / "model_outputs.json").read_text())
    assert loaded == records
    lines = (tmp_path / "mt_bench" / "model_answer" / "ref.jsonl").read_text().splitlines()
    assert [json.loads(line)["question_id"] for line in lines] == [81, 82, 83, 84]


def test_exports_skip_failed_items_and_use_item_ids_without_mt_bench_ids() -> None:
    experiment = gold_experiment()
    assert alpaca_eval_outputs(experiment, "broken") == []
    assert mtbench_answers(experiment, "solo")[0]["question_id"] == "g/0"
    assert safe_filename("best-of-4:Qwen/Qwen2.5") == "best-of-4_Qwen_Qwen2.5"


def test_readme_table_script_reads_the_summary_json(tmp_path: Path) -> None:
    from experiments.readme_table import pairs_table, readme_table

    rows = summarize(gold_experiment())
    (tmp_path / "summary.json").write_text(json.dumps(summary_json(rows[:2])))
    header, _, solo, moa = readme_table(tmp_path).splitlines()
    assert "| model s (10 items) | vs solo: points [95% CI]" in header
    assert solo == "| solo | 40.0 [16.8, 68.7] | 1.0 | 0 |  |"
    assert moa == "| moa | 80.0 [49.0, 94.3] | 4.0 | 6 (5) | +40.0 [-2.0, +68.6]; 4 / 0, p = 0.12 |"
    assert pairs_table(tmp_path) == ""
    rows = summarize(gold_experiment(), pairs={"solo": "moa"})
    (tmp_path / "summary.json").write_text(json.dumps(summary_json(rows)))
    assert pairs_table(tmp_path).splitlines()[2] == (
        "| solo | moa | -40.0 [-68.6, +2.0]; 0 / 4, p = 0.12 |"
    )
