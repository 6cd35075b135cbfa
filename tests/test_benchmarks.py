"""The benchmark references do the same work as the mixture: their ratios compare like with like."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from benchmarks import baseline, langchain_baseline
from benchmarks.harness import build_moa, critical_paths, question
from moa_graph.testing import ModelScript, OpenAICompatibleServer


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    scripts = {name: ModelScript(reply=f"Answer from {name}.") for name in baseline.PROPOSERS}
    scripts[baseline.AGGREGATOR] = ModelScript(reply="Forty two.")
    with OpenAICompatibleServer(scripts=scripts) as running:
        yield running


def _requests_of(server: OpenAICompatibleServer, text: str) -> Counter[str]:
    """Each request of the run asking ``text``: model, messages, sampling settings, streaming.

    The question is replaced by ``Q`` so runs asking different questions compare; the token
    limit is read under either of its two OpenAI names.
    """
    requests: Counter[str] = Counter()
    for record in server.requests():
        if not any(m.get("content") == text for m in record.messages):
            continue
        limit = record.params.get("max_tokens", record.params.get("max_completion_tokens"))
        request = [record.model, record.messages, record.params.get("temperature"), limit]
        requests[json.dumps([*request, record.stream], sort_keys=True).replace(text, "Q")] += 1
    return requests


def test_both_references_send_exactly_the_mixtures_requests(
    server: OpenAICompatibleServer,
) -> None:
    moa = build_moa(server.base_url)
    chat_models = langchain_baseline.chat_models(server.base_url)

    async def run_all() -> list[str]:
        api = baseline.client(server.base_url)
        try:
            return [
                (await moa.ainvoke(question("moa", 0))).text,
                await baseline.run(api, question("openai", 0)),
                await langchain_baseline.run(chat_models, question("langchain", 0)),
            ]
        finally:
            await api.close()

    assert asyncio.run(run_all()) == ["Forty two."] * 3

    mixture = _requests_of(server, question("moa", 0))
    assert sum(mixture.values()) == 4 * 2 + 1
    assert len(mixture) == 4 * 2 + 1  # every request differs: model, or the references it got
    assert _requests_of(server, question("openai", 0)) == mixture
    assert _requests_of(server, question("langchain", 0)) == mixture
    paths = critical_paths(server.requests())
    assert {len(paths[question(tag, 0)].proposer_layers) for tag in ("moa", "openai")} == {2}


def test_the_staircase_benchmark_compares_each_chunk_size_with_staircase_off() -> None:
    from benchmarks import staircase

    names = (*staircase.PROPOSERS, staircase.AGGREGATOR)
    scripts = {name: ModelScript(reply=staircase.words(name, 24)) for name in names}
    with OpenAICompatibleServer(scripts=scripts) as server:
        chosen = [staircase.parse_variant(text, 2.0) for text in ("4", "8", "4@4")]
        variants = {"None": None, **{staircase.label(v, 2.0): v for v in chosen}}
        report = staircase.measure(
            lambda variant: staircase.loopback_mixture(server.base_url, variant),
            lambda i: f"Question {i}?", variants, 2, staircase._aggregator_rounds,
        )  # fmt: skip
    assert list(report) == ["None", "4", "8", "4@4"]
    answer = len(staircase.words(staircase.AGGREGATOR, 24))
    assert {variant["answer_chars"] for variant in report.values()} == {answer}
    # 24-token references shown after each round: 4, 12, whole (from 4 at growth 2); 8, whole;
    # 4, 20, whole (from 4 at growth 4)
    assert [report[v]["aggregator_calls"] for v in report] == [0, 3, 2, 3]
    assert all(report[v]["prompt_tokens_per_call"] > 0 for v in ("4", "8", "4@4"))
    assert all({"ttft_ratio", "wall_ratio"} <= set(report[v]) for v in ("4", "8", "4@4"))


@pytest.mark.local_model
def test_the_samples_benchmark_compares_a_vote_drawn_together_and_apart() -> None:
    from benchmarks import samples

    prompts = ["What is 2 + 3? End with 'The answer is N'.", "What is 4 + 4?"]
    report = samples.measure("smollm2-135m", samples=2, prompts=prompts, runs=1, tokens=8)
    assert report["questions"] == 2
    assert {"one answer", "llama.cpp alone", "vote, one request", "vote, apart"} <= set(report)
    assert all(report[name]["tokens_per_s"] > 0 for name in ("one answer", "llama.cpp alone"))
    assert report["vote, one request"]["x_one_answer"] > 0
    assert report["vote, apart"]["x_one_answer"] > 0
    ceiling = samples.batch_ceiling("smollm2-135m", 2, prompts[0], tokens=6)
    assert ceiling["one answer tokens_per_s"] > 0 and ceiling["2 in one request tokens_per_s"] > 0
    assert ceiling["x_one_answer"] > 0


def test_the_local_models_benchmark_measures_each_model_alone_and_all_loaded() -> None:
    from benchmarks import local_models

    alone = local_models._in_new_process(local_models.measure, "smollm2-135m", 4, 1)
    assert alone["model"] == "smollm2-135m" and alone["output_tokens"] == 4
    assert alone["load_s"] > 0 and alone["rss_added_mb"] > 0 and alone["tokens_per_s"] > 0
    assert alone["prompt_tokens_per_s"] > 0  # the prompt's tokens, as the model counted them
    together = local_models.measure_all_loaded(["smollm2-135m"], 4, 1)
    assert set(together) == {"smollm2-135m"} and together["smollm2-135m"] > 0


def test_a_worker_killed_in_each_layer_is_finished_by_another_process(postgres_url: str) -> None:
    from benchmarks import crash_resume

    trials = [crash_resume.trial(number, postgres_url) for number in range(3)]
    assert [t["phase"] for t in trials] == ["layer 1", "layer 2", "aggregation"]
    assert all(t["killed_running"] and t["finished"] for t in trials)
    assert sum(t["saved_answers_called_again"] for t in trials) == 0
    assert all(t["in_flight_called_again"] == t["in_flight_at_kill"] > 0 for t in trials)


def test_the_sharded_eval_benchmark_compares_shards_with_one_process() -> None:
    from benchmarks import sharded_eval

    report = sharded_eval.measure(items=6, shards=2)
    assert report["same_summary"] is True
    assert report["duplicated_calls"] == 0
    assert report["model_calls_one_process"] == 6 * 4  # p1 alone is the mixture's p1 call, shared
    assert report["wall_s_sharded"] > 0 and report["sharded_over_one"] > 0


def test_the_serve_load_benchmark_answers_every_client_with_and_without_the_store() -> None:
    from benchmarks import serve_load

    report = serve_load.measure(workers=2, clients=12)
    for side in ("no store", "durable store"):
        assert report[side]["answered"] == "12/12", report[side]["errors"]
        assert 0 < report[side]["first_token_p50_s"] <= report[side]["total_p99_s"]
        assert report[side]["peak_rss_mib"] > 100  # a supervisor and two workers with LangChain


def test_peak_memory_counts_the_child_processes() -> None:
    import subprocess
    import sys

    from benchmarks.serve_load import _rss_bytes

    alone = _rss_bytes(os.getpid())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            time.sleep(0.3)
            assert _rss_bytes(os.getpid()) > alone + _rss_bytes(child.pid) // 2 > alone
        finally:
            child.kill()
