"""Summaries of an experiment: a Markdown table, paired tests, JSON, and a quality-vs-cost PNG.

Quality is accuracy (Wilson 95% interval) on data sets with gold answers, the mean MT-Bench
judge rating (bootstrap 95% interval) without them, and the win rate against the reference
system (ties count half, bootstrap interval) when a pairwise comparison was run. Cost columns
are per answered item: tokens in and out, LLM calls, wall seconds, model seconds (the time of
all the item's model calls, calls served by the shared call cache included; over the items where
it is known), and dollars if prices are set.

Example:
    >>> from moa_graph.evaluation.datasets import Dataset, Item
    >>> from moa_graph.evaluation.runner import ItemResult, Experiment
    >>> from moa_graph.evaluation.scoring import Score
    >>> from moa_graph.evaluation.systems import Answer, System
    >>> from moa_graph.evaluation.costs import TokenUsage
    >>> ds = Dataset("d", (Item(id="d/1", turns=("q",), gold="1"),), "numeric")
    >>> answer = Answer(("1",), {"m": TokenUsage(10, 2)}, wall_s=0.5, calls=1)
    >>> system = System("m", {"kind": "single"}, _never_called)
    >>> exp = Experiment(ds, (system,), (ItemResult("m", "d/1", answer, Score(True, "1")),))
    >>> rows = summarize(exp)
    >>> rows[0].metrics["accuracy"].value, rows[0].tokens_in
    (1.0, 10.0)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from moa_graph.evaluation.costs import PriceTable, merge_usage
from moa_graph.evaluation.runner import Experiment, ItemResult
from moa_graph.evaluation.scoring import McNemar, bootstrap_interval, mcnemar, wilson_interval
from moa_graph.evaluation.systems import System
from moa_graph.extras import EXTRAS


def _never_called(messages: Any, seed: Any) -> Any:
    """A responder for systems rebuilt from records: reports never call them."""
    raise AssertionError("a report makes no model call")


class MissingDependencyError(ImportError):
    """An optional package is needed; the message names the pip command."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval, over ``n`` scored items."""

    value: float
    low: float
    high: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """``"61.0 [52.3, 69.0]"`` (values multiplied by ``scale``)."""
        v, lo, hi = (x * scale for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass(frozen=True)
class SummaryRow:
    """One system's line of the summary table (costs are means per answered item)."""

    system: str
    kind: str
    items: int
    answered: int
    errors: int
    metrics: dict[str, Estimate] = field(default_factory=dict)
    tokens_in: float | None = None
    tokens_out: float | None = None
    calls: float | None = None
    wall_s: float | None = None
    cost: float | None = None
    model_s: float | None = None
    model_s_items: int = 0
    paired_with: str | None = None
    paired: McNemar | None = None
    compared_with: str | None = None
    compared: McNemar | None = None
    seeds: str = "none"
    """How its calls drew: ``per-item from S``, ``fixed S`` (every item the same seeds: runs
    made before per-item seeds) or ``none``."""

    @property
    def quality(self) -> Estimate | None:
        """The headline metric (the first one)."""
        return next(iter(self.metrics.values()), None)


METRIC_LABELS = {
    "accuracy": ("accuracy % [95% CI]", 100.0),
    "mt_bench": ("MT-Bench score [95% CI]", 1.0),
    "win_rate": ("win rate % vs {reference} [95% CI]", 100.0),
}


def _accuracy(results: Sequence[ItemResult]) -> Estimate | None:
    """Accuracy over the scored results, with its Wilson interval (``None`` if none is scored)."""
    correct = [r.score.correct for r in results if r.score.correct is not None]
    if not correct:
        return None
    low, high = wilson_interval(sum(correct), len(correct))
    return Estimate(sum(correct) / len(correct), low, high, len(correct))


def _metrics(experiment: Experiment, results: Sequence[ItemResult]) -> dict[str, Estimate]:
    metrics: dict[str, Estimate] = {}
    if experiment.dataset.metric != "judge" and (accuracy := _accuracy(results)) is not None:
        metrics["accuracy"] = accuracy
    ratings = [s for r in results if r.grading and (s := r.grading.score) is not None]
    if ratings:
        metrics["mt_bench"] = Estimate(fmean(ratings), *bootstrap_interval(ratings), len(ratings))
    wins = [s for r in results if r.comparison and (s := r.comparison.score) is not None]
    if wins:
        metrics["win_rate"] = Estimate(fmean(wins), *bootstrap_interval(wins), len(wins))
    return metrics


def summarize(
    experiment: Experiment,
    prices: PriceTable | None = None,
    pairs: Mapping[str, str] | None = None,
) -> list[SummaryRow]:
    """One row per system, in the order the systems were given; ``paired`` holds its test
    against ``paired_with`` (the most accurate single model) on data sets with gold answers,
    and ``compared`` its test against the system ``pairs`` names for it (``compared_with``).

    Example:
        >>> rows = summarize(exp, pairs={"moa-staircase": "moa"})   # doctest: +SKIP
        >>> rows[-1].compared_with, rows[-1].compared.p_value       # doctest: +SKIP
        ('moa', 0.5)
    """
    baseline = paired_baseline(experiment) if experiment.systems else None
    tests = paired_tests(experiment, baseline)
    chosen = {name: (other, paired_test(experiment, name, other))
              for name, other in (pairs or {}).items()}  # fmt: skip
    rows = []
    for system in experiment.systems:
        results = experiment.for_system(system.name)
        answers = [r.answer for r in results if r.answer is not None]
        costs = [prices.cost(a.usage) for a in answers] if prices else []
        priced = [c for c in costs if c is not None]

        def mean(values: Sequence[float]) -> float | None:
            return fmean(values) if values else None

        rows.append(
            SummaryRow(
                system=system.name,
                kind=str(system.config.get("kind", "")),
                items=len(results),
                answered=len(answers),
                errors=sum(1 for r in results if r.error),
                metrics=_metrics(experiment, results),
                tokens_in=mean([a.total_usage.input_tokens for a in answers]),
                tokens_out=mean([a.total_usage.output_tokens for a in answers]),
                calls=mean([a.calls for a in answers]),
                wall_s=mean([a.wall_s for a in answers]),
                model_s=mean(timed := [s for a in answers if (s := a.model_s) is not None]),
                model_s_items=len(timed),
                cost=mean(priced) if priced and len(priced) == len(costs) else None,
                paired_with=baseline if system.name in tests else None,
                paired=tests.get(system.name),
                compared_with=chosen[system.name][0] if system.name in chosen else None,
                compared=chosen[system.name][1] if system.name in chosen else None,
                seeds=seeds_label(system),
            )
        )
    return rows


def seeds_label(system: System) -> str:
    """How a system's calls drew their random numbers, as reports say it.

    Example:
        >>> seeds_label(System("m", {"seed": 0, "seed_mode": "per-item"}, _never_called))
        'per-item from 0'
        >>> seeds_label(System("m", {"seed": 0}, _never_called))
        'fixed 0'
        >>> seeds_label(System("m", {}, _never_called))
        'none'
    """
    mode = system.seed_mode
    if mode is None:
        return "none"
    seed = system.config["seed"]
    return f"per-item from {seed}" if mode == "per-item" else f"{mode} {seed}"


def paired_baseline(experiment: Experiment) -> str:
    """The system the others are paired against: the most accurate single model (the first
    listed among equals), or the first system when none is a single model.

    Example:
        >>> paired_baseline(exp)   # doctest: +SKIP
        'qwen2.5-coder-1.5b'
    """
    if not experiment.systems:
        raise ValueError("paired_baseline: the experiment has no systems")
    singles = [s.name for s in experiment.systems if s.config.get("kind") == "single"]
    if not singles:
        return experiment.systems[0].name

    def accuracy(name: str) -> float:
        estimate = _accuracy(experiment.for_system(name))
        return -1.0 if estimate is None else estimate.value

    return max(singles, key=accuracy)  # max keeps the first of equals


def paired_tests(experiment: Experiment, baseline: str | None = None) -> dict[str, McNemar]:
    """Exact McNemar test, and the paired accuracy difference with its 95% interval, of every
    system against ``baseline`` (default: :func:`paired_baseline`), on the items both answered.
    Empty for data sets without gold answers.

    Example:
        >>> paired_tests(exp)   # doctest: +SKIP
        {'moa': McNemar(only_a=12, only_b=4, p_value=0.077, n=50, difference=0.16, ...)}
    """
    if experiment.dataset.metric == "judge" or not experiment.systems:
        return {}
    baseline = baseline or paired_baseline(experiment)
    tests = {}
    for system in experiment.systems:
        if system.name != baseline and (test := paired_test(experiment, system.name, baseline)):
            tests[system.name] = test
    return tests


def paired_test(experiment: Experiment, system: str, other: str) -> McNemar | None:
    """Exact McNemar test of ``system`` against ``other`` on the items both answered and
    scored (``None`` when there are none, or the data set has no gold answers).

    Example:
        >>> paired_test(exp, "moa-staircase", "moa").difference   # doctest: +SKIP
        -0.017
    """
    if experiment.dataset.metric == "judge":
        return None
    base = {r.item_id: r.score.correct for r in experiment.for_system(other)}
    pairs = [
        (bool(r.score.correct), bool(base[r.item_id]))
        for r in experiment.for_system(system)
        if r.score.correct is not None and base.get(r.item_id) is not None
    ]
    return mcnemar([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(
    rows: Sequence[SummaryRow], *, reference: str | None = None, prices: bool = False
) -> str:
    """The summary as a Markdown table.

    Example:
        >>> row = SummaryRow("moa", "moa", 10, 10, 0, {"accuracy": Estimate(0.6, 0.31, 0.83, 10)})
        >>> print(markdown_table([row]).splitlines()[2])
        | moa | moa | 60.0 [31.0, 83.0] | 10 | 0 | n/a | n/a | n/a | n/a | n/a |
    """
    metric_names = list(dict.fromkeys(name for row in rows for name in row.metrics))
    headers = ["system", "kind"]
    for name in metric_names:
        label = METRIC_LABELS[name][0].format(reference=reference or "reference")
        headers.append(label)
    headers += ["n", "errors", "tokens in", "tokens out", "calls", "wall s", "model s"]
    if prices:
        headers.append("$ / answer")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row.system, row.kind]
        for name in metric_names:
            estimate = row.metrics.get(name)
            scale = METRIC_LABELS[name][1]
            cells.append(estimate.format(scale, 1 if scale > 1 else 2) if estimate else "n/a")
        cells += [
            str(row.answered),
            str(row.errors),
            _number(row.tokens_in, 0),
            _number(row.tokens_out, 0),
            _number(row.calls),
            _number(row.wall_s, 2),
            _model_seconds(row),
        ]
        if prices:
            cells.append("n/a" if row.cost is None else f"{row.cost:.6f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _model_seconds(row: SummaryRow) -> str:
    """Mean model seconds, with its number of items when some answers were not timed."""
    seconds = _number(row.model_s, 2)
    if row.model_s is None or row.model_s_items == row.answered:
        return seconds
    return f"{seconds} ({row.model_s_items} items)"


def format_difference(test: McNemar) -> str:
    """A paired accuracy difference and its 95% interval, in signed points.

    Example:
        >>> format_difference(McNemar(8, 2, 0.11, 60, 0.1, -0.01, 0.204))
        '+10.0 [-1.0, +20.4]'
    """
    return f"{100 * test.difference:+.1f} [{100 * test.low:+.1f}, {100 * test.high:+.1f}]"


def _test_line(test: McNemar, other: str) -> str:
    return (f"{format_difference(test)} on {test.n} items; right where {other} was wrong on "
            f"{test.only_a} items, wrong where it was right on {test.only_b}; "
            f"p = {test.p_value:.3g}")  # fmt: skip


def markdown_report(
    experiment: Experiment,
    prices: PriceTable | None = None,
    rows: Sequence[SummaryRow] | None = None,
) -> str:
    """A full Markdown report: set-up, summary table, paired tests and missing prices
    (``rows``: the experiment's ``summarize`` rows, when the caller already has them)."""
    rows = summarize(experiment, prices) if rows is None else rows
    dataset = experiment.dataset
    lines = [
        f"# {dataset.name}: {len(dataset)} items",
        "",
        f"Source: {dataset.source or 'n/a'}. Scoring: {dataset.metric}"
        + (f"; judge: {experiment.judge}" if experiment.judge else "")
        + (f"; reference system: {experiment.reference}" if experiment.reference else "")
        + ".",
        "",
        markdown_table(rows, reference=experiment.reference, prices=bool(prices)),
    ]
    if rows:
        lines += ["", _seeds_line(rows)]
    if any(row.model_s is not None for row in rows):
        lines += ["", "Model s: the seconds of all of an item's model calls, each counted at the "
                  "time it took when made (also when the shared call cache answered it; local "
                  "models count compute time, not queueing). Wall s leaves out the calls the "
                  "cache answered."]  # fmt: skip
    tests = {row.system: row.paired for row in rows if row.paired is not None}
    baseline = next((row.paired_with for row in rows if row.paired_with), None)
    if tests:
        lines += ["", f"Paired against {baseline} (exact McNemar test; accuracy difference in "
                  "points with its 95% interval, Bonett-Price):", ""]  # fmt: skip
        lines += [f"- {name}: {_test_line(test, str(baseline))}" for name, test in tests.items()]
    compared = [(row, row.compared) for row in rows if row.compared is not None]
    if compared:
        lines += ["", "Paired as asked (`--pair`):", ""]
        lines += [f"- {row.system} against {row.compared_with}: "
                  f"{_test_line(test, str(row.compared_with))}"
                  for row, test in compared]  # fmt: skip
    if prices:
        used = merge_usage(r.answer.usage for r in experiment.results if r.answer)
        missing = prices.missing(used)
        if missing:
            lines += ["", f"No price for: {', '.join(missing)} (their systems show n/a)."]
    errors = [r for r in experiment.results if r.error]
    if errors:
        lines += ["", f"{len(errors)} failed answer(s); first: {errors[0].system} "
                  f"{errors[0].item_id}: {errors[0].error}"]  # fmt: skip
    if experiment.judge_errors:
        lines += ["", f"{len(experiment.judge_errors)} failed judge call(s); first: "
                  f"{experiment.judge_errors[0]}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _seeds_line(rows: Sequence[SummaryRow]) -> str:
    modes = {row.seeds for row in rows}
    said = (f"{modes.pop()} (every system)" if len(modes) == 1
            else "; ".join(f"{row.system}: {row.seeds}" for row in rows))  # fmt: skip
    return (
        f"Seeds: {said}. Per-item: each item draws with its own seed, derived from the "
        "experiment's seed and the item's id; fixed: every item draws with the same seeds."
    )


def summary_json(rows: Sequence[SummaryRow]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dictionaries."""
    return [asdict(row) for row in rows]


#: Marker shapes, cycled with matplotlib's ten colours: twenty systems stay distinguishable.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_quality_vs_cost(rows: Sequence[SummaryRow], path: str | Path, *, title: str = "") -> Path:
    """Save a PNG of each system's headline quality (with its 95% interval) against its cost.

    The x axis is dollars per answer when every system has a cost, else tokens per answer.

    Raises:
        MissingDependencyError: matplotlib is not installed (the ``eval`` extra).
        ValueError: no system has a quality estimate.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError(
            f"the quality-vs-cost plot needs matplotlib: {EXTRAS['eval'].install}"
        ) from exc
    points = [row for row in rows if row.quality is not None]
    if not points:
        raise ValueError("plot: no system has a quality estimate")
    use_cost = all(row.cost is not None for row in points)
    xs = [
        (row.cost if use_cost else (row.tokens_in or 0) + (row.tokens_out or 0)) or 0.0
        for row in points
    ]
    metric = next(iter(points[0].metrics))
    scale = METRIC_LABELS[metric][1]
    figure, axes = plt.subplots(figsize=(8.4, 4.4), dpi=120)
    try:
        for i, (x, row) in enumerate(zip(xs, points, strict=True)):
            q = row.quality
            assert q is not None
            axes.errorbar(
                [x],
                [q.value * scale],
                yerr=[[(q.value - q.low) * scale], [(q.high - q.value) * scale]],
                fmt=_MARKERS[i % len(_MARKERS)],
                capsize=4,
                label=row.system,
            )
        # A legend rather than labels at the points: systems of similar cost would overlap.
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
        axes.set_xlabel("$ per answer" if use_cost else "tokens per answer (in + out)")
        axes.set_ylabel(METRIC_LABELS[metric][0].format(reference="reference"))
        axes.set_title(title or "quality vs cost")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
    return path
