"""``moa-graph eval``: run systems over a data set, score, judge, report and export.

Example::

    moa-graph eval --dataset gsm8k --limit 3 --out runs/smoke \\
        --systems single:local:smollm2-135m moa:local-tiny --max-tokens 96
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from langchain_core.globals import get_llm_cache, set_llm_cache

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.call_cache import CallCache
from moa_graph.evaluation.costs import PriceTable
from moa_graph.evaluation.datasets import Dataset, load_dataset
from moa_graph.evaluation.exporters import write_exports
from moa_graph.evaluation.judge import Judge
from moa_graph.evaluation.packages import DataPackageError
from moa_graph.evaluation.postgres import is_postgres_url
from moa_graph.evaluation.report import (
    MissingDependencyError,
    markdown_report,
    plot_quality_vs_cost,
    summarize,
    summary_json,
    write_json,
)
from moa_graph.evaluation.runner import run_experiment
from moa_graph.evaluation.systems import SEED_MODES, System, parse_system

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_eval_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``eval`` arguments, added to ``parser`` (e.g. a subcommand's) or to a new parser."""
    parser = parser or argparse.ArgumentParser(
        prog="moa-graph eval", description="Evaluate MoA systems on a data set."
    )
    parser.add_argument("--dataset", required=True, help="gsm8k | arc | mtbench | jsonl:PATH")
    parser.add_argument(
        "--limit", type=int, help="evaluate N items drawn with --draw-seed (default all)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the experiment's seed: each item's model calls and reference shuffles draw with "
        "a seed derived from it and the item's id (default 0)",
    )
    parser.add_argument(
        "--seed-mode",
        choices=SEED_MODES,
        default="per-item",
        help="per-item (default): items draw independently; fixed: every item draws with "
        "--seed itself, as runs made before per-item seeds did",
    )
    parser.add_argument(
        "--draw-seed",
        type=int,
        metavar="SEED",
        help="seed of the --limit draw of items (default: --seed), so runs with other seeds "
        "can answer the same items",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="single:MODEL | moa:PRESET|FILE.toml | self-moa:MODEL,n=6 | "
        "best-of-n:MODEL,n=4[,ranker=MODEL]; each may add ,name=NAME",
    )
    parser.add_argument("--out", help="output folder (default: eval-runs/<dataset>)")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep answers and model calls in PostgreSQL (postgresql://...), shared by every "
        "process of the experiment (default: files in --out)",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="answer only shard I of N of the items (items I, I+N, ...; with --store, N "
        "processes on one or many machines share an experiment)",
    )
    parser.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write the summaries, plot and exports here (default: --out, which keeps the caches)",
    )
    parser.add_argument("--judge", metavar="MODEL", help="judge model (data without gold answers)")
    parser.add_argument(
        "--reference", metavar="SYSTEM", help="system name to compare the others with (pairwise)"
    )
    parser.add_argument(
        "--pair",
        nargs="+",
        action="extend",  # a repeated --pair adds its pairs to the earlier ones
        default=[],
        metavar="SYSTEM=OTHER",
        help="also test SYSTEM against OTHER, paired (McNemar), in the summaries",
    )
    parser.add_argument(
        "--prices",
        nargs="+",
        default=[],
        metavar="PRICE",
        help="MODEL=IN,OUT ($ per million tokens) or a .json/.toml file of them",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    parser.add_argument("--max-tokens", type=int, help="answer length limit (default 512)")
    parser.add_argument("--concurrency", type=int, default=1, help="(system, item) pairs at once")
    parser.add_argument(
        "--langsmith",
        action="store_true",
        help="also run langsmith.evaluate (uploads only when LANGSMITH_API_KEY is set)",
    )
    parser.add_argument(
        "--no-call-cache",
        action="store_true",
        help="do not share identical model calls between systems (OUT/calls.sqlite)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="make no calls: report the items every system has already answered",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main_eval(argv: Sequence[str] | None = None) -> int:
    """Run ``moa-graph eval``; returns the exit code.

    Arguments:
        --dataset NAME: ``gsm8k`` (GSM8K test, 1319), ``arc`` (ARC-Challenge test, 1172),
            ``mtbench`` (MT-Bench, 80 two-turn questions, needs ``--judge``) or ``jsonl:PATH``.
        --limit N: evaluate N items drawn with ``--draw-seed`` (kept in data set order; a
            smaller limit's items are a subset of a larger one's, so raising it reuses the cache).
        --seed S: the experiment's seed (default 0). Each item's calls draw with the item's own
            seed, derived from S and its id (``item_seed``): a model alone with it, a mixture's
            sample k with it plus k, shuffles derived from it. A rerun reproduces every call.
        --seed-mode per-item|fixed: ``fixed`` gives every item the seed S itself (sample k then
            makes the same random draws on every item), as runs made before per-item seeds did;
            their cached answers are found again with it.
        --draw-seed D: seed of the ``--limit`` draw (default S), so experiments with several
            seeds answer the same items.
        --systems SPEC...: the systems: ``single:MODEL`` (or just ``MODEL``),
            ``moa:PRESET`` / ``moa:FILE.toml`` (or just ``PRESET``), ``self-moa:MODEL,n=6``,
            ``best-of-n:MODEL,n=4[,ranker=MODEL]``; any may end with ``,name=NAME``.
        --out DIR: output folder (default ``eval-runs/<dataset>``): ``cache.jsonl`` (resume),
            ``summary.md``, ``summary.json``, ``quality_vs_cost.png``,
            ``alpaca_eval/<system>/model_outputs.json``, ``mt_bench/model_answer/<system>.jsonl``.
        --store URL: keep answers and model calls in PostgreSQL (``postgresql://...``) instead
            of ``OUT/cache.jsonl`` and ``OUT/calls.sqlite``: every process of a sharded
            experiment reads and writes there, so an identical call is paid once across them.
        --shard I/N: answer only the I-th of N interleaved shares of the items (reports then
            cover that shard; ``--report-only`` without ``--shard`` reports the whole store).
        --report-dir DIR: write the summaries, the plot and the exports to DIR instead of
            ``--out`` (a side experiment on some systems of a folder reuses its caches without
            overwriting its report).
        --judge MODEL: the LLM judge (MT-Bench single-answer grading; pairwise with
            ``--reference``).
        --reference SYSTEM: compare every other system with this one, position-swapped
            (AlpacaEval-style win rate).
        --pair SYSTEM=OTHER...: besides the test against the best single model, test SYSTEM
            against OTHER on the items both answered (``compared`` in ``summary.json``; data
            sets with gold answers).
        --prices PRICE...: ``MODEL=IN,OUT`` dollars per million tokens, or JSON/TOML files.
        --temperature T, --max-tokens N: sampling of models built from strings (default 0.7,
            512; a MoA recipe keeps its own unless given).
        --concurrency N: (system, item) pairs worked on at once (default 1).
        --no-call-cache: by default identical model calls (same model, settings, seed and
            messages) are made once and shared through ``OUT/calls.sqlite``: a model alone and
            the same model in a mixture's first layer pay once, and the wall time of the system
            coming second excludes them (tokens, calls and model seconds still count them).
        --langsmith: also run ``langsmith.evaluate`` per system (in memory without a key).
        --report-only: make no model call; report the items every system already answered
            (the complete part of an interrupted experiment).
        --no-plot: skip the PNG. --quiet: no progress bar.

    Exit codes: 0 done, 1 failed, 2 usage error, 130 interrupted (the cache keeps progress).

    Example:
        >>> main_eval(["--dataset", "nope", "--systems", "local-tiny"])   # doctest: +SKIP
        2
    """
    args = build_eval_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, DataPackageError) as exc:
        print(f"moa-graph eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "\nmoa-graph eval: interrupted; model calls under way end first and keep their "
            "answers; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


_EXTRACTORS = {"numeric": "number", "choice": "choice"}
"""The mixtures' default answer extractor for a data set's kind of gold answer."""


def shard_of(dataset: Dataset, spec: str) -> Dataset:
    """The items of shard ``I/N``: the I-th, (I+N)-th, ... of ``dataset`` (I from 1).

    Example:
        >>> from moa_graph.evaluation.datasets import Item
        >>> items = tuple(Item(id=f"x/{i}", turns=("q",)) for i in range(5))
        >>> [item.id for item in shard_of(Dataset("x", items, "numeric"), "2/2")]
        ['x/1', 'x/3']
    """
    index, sep, count = spec.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"--shard: must be I/N with 1 <= I <= N (got {spec!r})")
    return replace(dataset, items=dataset.items[int(index) - 1 :: int(count)])


def parse_pairs(specs: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--pair`` values as {system: the system it is tested against}, names checked.

    Example:
        >>> parse_pairs(["moa-staircase=moa"], ["moa", "moa-staircase"])
        {'moa-staircase': 'moa'}
    """
    pairs: dict[str, str] = {}
    for spec in specs:
        system, sep, other = (part.strip() for part in spec.partition("="))
        if not sep or not system or not other or system == other:
            raise ValueError(f"--pair: {spec!r} is not SYSTEM=OTHER (two different systems)")
        for name in (system, other):
            if name not in names:
                raise ValueError(f"--pair: no system is named {name!r} (the systems: "
                                 f"{', '.join(names)})")  # fmt: skip
        if pairs.setdefault(system, other) != other:
            raise ValueError(f"--pair: {system!r} is paired twice; one other system each")
    return pairs


def answered_by_all(dataset: Dataset, systems: Sequence[System], cache: ResultCache) -> Dataset:
    """The items of ``dataset`` that every system has a cached answer for (``--report-only``)."""
    done = [item for item in dataset
            if all(("answer", (s.key, item.id)) in cache for s in systems)]  # fmt: skip
    if not done:
        raise ValueError(f"--report-only: no item of {dataset.name} has answers from every system")
    return replace(dataset, items=tuple(done))


def _run(args: argparse.Namespace) -> int:
    draw_seed = args.seed if args.draw_seed is None else args.draw_seed
    dataset = load_dataset(args.dataset).subset(args.limit, draw_seed)
    if args.shard:
        dataset = shard_of(dataset, args.shard)
    if args.store and not is_postgres_url(args.store):
        raise ValueError(f"--store: must be a postgresql:// URL (got {args.store!r})")
    systems = [
        parse_system(spec, temperature=args.temperature, max_tokens=args.max_tokens,
                     seed=args.seed, seed_mode=args.seed_mode,
                     answer_extractor=_EXTRACTORS.get(dataset.metric))
        for spec in args.systems
    ]  # fmt: skip
    pairs = parse_pairs(args.pair, [s.name for s in systems])
    prices = PriceTable.parse(args.prices)
    if dataset.metric == "judge" and not args.judge:
        raise ValueError(f"dataset {dataset.name} has no gold answers: give --judge MODEL")
    if pairs and dataset.metric == "judge":
        raise ValueError(f"--pair: dataset {dataset.name} has no gold answers to pair on")
    judge = Judge(args.judge) if args.judge else None
    out = Path(args.out or Path("eval-runs") / dataset.name)
    cache = ResultCache(args.store or out / "cache.jsonl")
    if args.report_only:
        dataset = answered_by_all(dataset, systems, cache)
    calls = None if args.no_call_cache else CallCache(args.store or out / "calls.sqlite")
    with _llm_cache(calls):
        return _evaluate(args, dataset, systems, prices, pairs, judge, out, cache, calls)


@contextlib.contextmanager
def _llm_cache(calls: CallCache | None) -> Iterator[None]:
    """LangChain's global LLM cache set to ``calls`` for the experiment, then restored."""
    if calls is None:
        yield
        return
    previous = get_llm_cache()
    set_llm_cache(calls)
    try:
        yield
    finally:
        set_llm_cache(previous)
        calls.close()


def _evaluate(
    args: argparse.Namespace,
    dataset: Dataset,
    systems: list[System],
    prices: PriceTable,
    pairs: dict[str, str],
    judge: Judge | None,
    out: Path,
    cache: ResultCache,
    calls: CallCache | None,
) -> int:
    progress = None if args.quiet else sys.stderr
    print(
        f"eval: {dataset.name} ({len(dataset)} items), systems: "
        + ", ".join(s.name for s in systems)
        + f"; cache: {cache.where} ({len(cache)} records)",
        file=sys.stderr,
    )
    experiment = run_experiment(
        dataset,
        systems,
        cache=cache,
        judge=judge,
        reference=args.reference,
        concurrency=args.concurrency,
        progress=progress,
    )
    if calls is not None:
        print(f"eval: shared model calls: {calls.hits} reused, {calls.misses} made "
              f"({calls.where})", file=sys.stderr)  # fmt: skip
    rows = summarize(experiment, prices or None, pairs)
    report = markdown_report(experiment, prices or None, rows)
    reports = Path(args.report_dir) if args.report_dir else out
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "summary.md").write_text(report, encoding="utf-8")
    write_json(reports / "summary.json", summary_json(rows))
    write_exports(experiment, reports)
    if not args.no_plot:
        try:
            plot_quality_vs_cost(rows, reports / "quality_vs_cost.png", title=dataset.name)
        except (MissingDependencyError, ValueError) as exc:
            print(f"eval: no plot: {exc}", file=sys.stderr)
    if args.langsmith:
        from moa_graph.evaluation.langsmith_eval import evaluate_system

        with contextlib.redirect_stdout(sys.stderr):  # langsmith prints progress to stdout
            for system in systems:
                evaluate_system(system, dataset, cache=cache, judge=judge)
    print(report)
    print(f"eval: results in {reports}", file=sys.stderr)
    return EXIT_FAILED if all(r.error for r in experiment.results) else EXIT_OK
