"""Experiment harness: MoA, Self-MoA, best-of-n ranking and single models on benchmarks.

Run systems over GSM8K, ARC-Challenge, MT-Bench or your own JSONL; score with gold answers or an
LLM judge; cache every answer (resumable); summarize with 95% intervals, tokens, time and cost;
export AlpacaEval / MT-Bench answer files; evaluate through LangSmith.

Example:
    >>> from moa_graph.evaluation import load_dataset, single, moa, run_experiment, summarize
    >>> dataset = load_dataset("gsm8k").subset(3, seed=0)            # doctest: +SKIP
    >>> systems = [single("local:smollm2-135m"), moa("local-tiny")]  # doctest: +SKIP
    >>> experiment = run_experiment(dataset, systems)                # doctest: +SKIP
    >>> print(markdown_table(summarize(experiment)))                 # doctest: +SKIP
"""

from moa_graph.answers import extract_choice, extract_number
from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.cli import main_eval
from moa_graph.evaluation.costs import Price, PriceTable, TokenUsage
from moa_graph.evaluation.datasets import (
    Dataset,
    Item,
    load_arc_challenge,
    load_dataset,
    load_gsm8k,
    load_jsonl,
    load_mtbench,
)
from moa_graph.evaluation.exporters import alpaca_eval_outputs, mtbench_answers, write_exports
from moa_graph.evaluation.judge import Comparison, Grading, Judge, parse_rating, parse_verdict
from moa_graph.evaluation.langsmith_eval import evaluate_system
from moa_graph.evaluation.packages import DataPackageError
from moa_graph.evaluation.report import (
    MissingDependencyError,
    markdown_report,
    markdown_table,
    paired_baseline,
    paired_tests,
    plot_quality_vs_cost,
    summarize,
)
from moa_graph.evaluation.runner import Experiment, ItemResult, run_experiment
from moa_graph.evaluation.scoring import (
    bootstrap_interval,
    mcnemar,
    score_answer,
    wilson_interval,
)
from moa_graph.evaluation.systems import (
    Answer,
    System,
    best_of_n_ranker,
    moa,
    parse_system,
    self_moa,
    single,
)

__all__ = [
    "Answer",
    "Comparison",
    "DataPackageError",
    "Dataset",
    "Experiment",
    "Grading",
    "Item",
    "ItemResult",
    "Judge",
    "MissingDependencyError",
    "Price",
    "PriceTable",
    "ResultCache",
    "System",
    "TokenUsage",
    "alpaca_eval_outputs",
    "best_of_n_ranker",
    "bootstrap_interval",
    "evaluate_system",
    "extract_choice",
    "extract_number",
    "load_arc_challenge",
    "load_dataset",
    "load_gsm8k",
    "load_jsonl",
    "load_mtbench",
    "main_eval",
    "markdown_report",
    "markdown_table",
    "mcnemar",
    "moa",
    "mtbench_answers",
    "paired_baseline",
    "paired_tests",
    "parse_rating",
    "parse_system",
    "parse_verdict",
    "plot_quality_vs_cost",
    "run_experiment",
    "score_answer",
    "self_moa",
    "single",
    "summarize",
    "wilson_interval",
    "write_exports",
]
