"""Staircase streaming: time to the first token of the final answer, and total wall time.

Two set-ups, each run with staircase off and with several chunk sizes, side by side in one run:

- ``loopback``: the scripted OpenAI-compatible server in a child process; 3 layers x 4
  proposers writing 256 tokens at 20 ms a token after 100 ms, an aggregator writing 256 tokens
  the same way. Every call, each round of a staircase too, pays the 100 ms before its first
  token.
- ``local``: the embedded ``local`` recipe (Qwen2.5-Coder-1.5B, 0.5B and SmolLM2-135M proposing,
  the 1.5B aggregating), models loaded before timing; also the prompt tokens the aggregator's
  rounds had to read anew (``input - cache_read``), llama.cpp's prompt cache serving the rest.

Each figure is the median of ``--runs`` runs. Ratios are staircase / off, measured in this run.

Run: ``python -m benchmarks.staircase`` (part of ``make bench``); ``--only loopback`` or
``--only local``, ``--chunks 8 16 32 64``, ``--runs N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from moa_graph import ChatMixtureOfAgents, ProposerSpec, presets
from moa_graph.settings import DEFAULTS
from moa_graph.testing import ModelScript, ServerProcess

PROPOSERS, AGGREGATOR = ("p1", "p2", "p3", "p4"), "agg"
TOKENS, PER_TOKEN, FIRST_TOKEN = 256, 0.020, 0.100
LOCAL_QUESTION = "What are 3 fun things to do in San Francisco?"


def words(tag: str, n: int = TOKENS) -> str:
    return " ".join(f"{tag}-{i}" for i in range(n))


def loopback_scripts() -> dict[str, ModelScript]:
    return {
        name: ModelScript(reply=words(name), ttft=FIRST_TOKEN, per_token=PER_TOKEN, jitter=0.0)
        for name in (*PROPOSERS, AGGREGATOR)
    }


def loopback_mixture(base_url: str, staircase: int | None, growth: float) -> ChatMixtureOfAgents:
    def spec(name: str) -> ProposerSpec:
        return ProposerSpec(model=f"openai:{name}", base_url=base_url, api_key="sk-bench",
                            continuation="prefill")  # fmt: skip

    return ChatMixtureOfAgents(
        proposers=[spec(name) for name in PROPOSERS], aggregator=spec(AGGREGATOR), layers=3,
        max_tokens=TOKENS, staircase=staircase, staircase_growth=growth, timeout=120,
    )  # fmt: skip


async def timed_stream(moa: ChatMixtureOfAgents, question: str
                       ) -> tuple[float, float, str, dict[str, Any]]:  # fmt: skip
    """Seconds to the first token of the answer, seconds to its end, the answer and its
    ``moa_staircase`` record."""
    started = time.perf_counter()
    first, text, staircase = None, "", {}
    async for chunk in moa.astream(question):
        if first is None and chunk.content:
            first = time.perf_counter() - started
        text += str(chunk.content)
        staircase = chunk.response_metadata.get("moa_staircase") or staircase
    wall = time.perf_counter() - started
    return (first if first is not None else float("nan")), wall, text, staircase


def measure(make: Callable[[int | None], ChatMixtureOfAgents], question: Callable[[int], str],
            chunks: list[int], runs: int, extra: Callable[..., dict[str, Any]] | None = None
            ) -> dict[str, Any]:  # fmt: skip
    """Median TTFT and wall of each variant; the variants take turns within every round."""
    variants: list[int | None] = [None, *chunks]
    samples: dict[str, list[dict[str, Any]]] = {str(v): [] for v in variants}
    mixtures = {str(v): make(v) for v in variants}

    async def all_runs() -> None:
        for i in range(runs):
            for variant in variants:
                ttft, wall, text, staircase = await timed_stream(
                    mixtures[str(variant)], question(i)
                )
                sample = {"ttft_s": ttft, "wall_s": wall, "answer_chars": len(text)}
                if extra is not None:
                    sample.update(extra(staircase))
                samples[str(variant)].append(sample)

    asyncio.run(all_runs())
    report: dict[str, Any] = {}
    for variant, rows in samples.items():
        keys = rows[0].keys()
        report[variant] = {key: round(statistics.median(r[key] for r in rows), 3) for key in keys}
    off = report["None"]
    for variant in map(str, chunks):
        report[variant]["ttft_ratio"] = round(report[variant]["ttft_s"] / off["ttft_s"], 3)
        report[variant]["wall_ratio"] = round(report[variant]["wall_s"] / off["wall_s"], 3)
    return report


def loopback(chunks: list[int], runs: int, growth: float) -> dict[str, Any]:
    with ServerProcess(loopback_scripts(), record_messages=False) as server:
        return measure(lambda staircase: loopback_mixture(server.base_url, staircase, growth),
                       lambda i: f"Question {i}: what should I see?", chunks, runs)  # fmt: skip


def _aggregator_rounds(staircase: dict[str, Any]) -> dict[str, Any]:
    """The aggregator's rounds and the prompt tokens they read anew (the rest was cached)."""
    fresh, whole = (staircase.get(key) or [] for key in ("fresh_prompt_tokens", "prompt_tokens"))

    def mean(values: list[int]) -> float:
        return round(statistics.mean(values), 1) if values else 0.0

    return {"aggregator_calls": len(fresh), "fresh_prompt_tokens_per_call": mean(fresh),
            "prompt_tokens_per_call": mean(whole)}  # fmt: skip


def local(chunks: list[int], runs: int, growth: float) -> dict[str, Any]:
    recipe = presets.local()

    def make(staircase: int | None) -> ChatMixtureOfAgents:
        return recipe.chat_model(staircase=staircase, staircase_growth=growth, seed=0,
                                 temperature=0.0)  # fmt: skip

    make(None).invoke("Hi")  # load every model before timing
    return measure(make, lambda i: LOCAL_QUESTION, chunks, runs, _aggregator_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["loopback", "local"], action="append")
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--growth", type=float, default=DEFAULTS.staircase_growth,
                        help="staircase_growth (default: the setting's)")  # fmt: skip
    args = parser.parse_args()
    parts = args.only or ["loopback", "local"]
    report: dict[str, Any] = {"growth": args.growth}
    for part in parts:
        report[part] = {"loopback": loopback, "local": local}[part](
            args.chunks, args.runs, args.growth
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
