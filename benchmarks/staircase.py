"""Staircase streaming: time to the first token of the final answer, and total wall time.

Two set-ups, each run with staircase off and with several chunk sizes, side by side in one run:

- ``loopback``: the scripted OpenAI-compatible server in a child process; 3 layers x 4
  proposers writing 256 tokens at 20 ms a token after 100 ms, an aggregator writing 256 tokens
  the same way. Every call, each round of a staircase too, pays the 100 ms before its first
  token.
- ``local``: the embedded ``local`` recipe (Qwen2.5-Coder-1.5B, 0.5B and SmolLM2-135M proposing,
  the 1.5B aggregating), models loaded before timing, run ``i`` asking question ``i`` of
  ``LOCAL_QUESTIONS`` (the answers' lengths differ between variants: one question would let one
  answer's length decide); also the prompt tokens the aggregator's rounds had to read anew
  (``input - cache_read``), llama.cpp's prompt cache serving the rest.

A variant is a chunk size, ``N`` (growth ``--growth``) or ``N@G`` (growth ``G``). Each figure is
the median of ``--runs`` runs. Ratios are staircase / off, measured in this run: the variant's
total over its runs against staircase off's over the same runs (the same questions), so that a
long answer to one question does not weigh as one run.

Run: ``python -m benchmarks.staircase`` (part of ``make bench``); ``--only loopback`` or
``--only local``, ``--chunks 8 16 32 64 8@8``, ``--runs N``.
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
LOCAL_QUESTIONS = (
    "What are 3 fun things to do in San Francisco?",
    "How do I keep basil alive on a windowsill?",
    "Explain in a few sentences why the sky is blue.",
)
DEFAULT_VARIANTS = ("8", "16", "32", "64", "8@8")


def words(tag: str, n: int = TOKENS) -> str:
    return " ".join(f"{tag}-{i}" for i in range(n))


def loopback_scripts() -> dict[str, ModelScript]:
    return {
        name: ModelScript(reply=words(name), ttft=FIRST_TOKEN, per_token=PER_TOKEN, jitter=0.0)
        for name in (*PROPOSERS, AGGREGATOR)
    }


Variant = tuple[int, float] | None
"""Staircase off (``None``), or its first chunk and growth."""


def parse_variant(text: str, growth: float) -> tuple[int, float]:
    """``"8"`` -> ``(8, growth)``; ``"8@4"`` -> ``(8, 4.0)``.

    Example:
        >>> parse_variant("8", 2.0), parse_variant("16@4", 2.0)
        ((8, 2.0), (16, 4.0))
    """
    chunk, _, own = text.partition("@")
    return int(chunk), float(own) if own else growth


def label(variant: Variant, growth: float) -> str:
    """The report's name of a variant: ``"None"``, ``"8"`` (at ``growth``) or ``"8@4"``."""
    if variant is None:
        return "None"
    chunk, own = variant
    return str(chunk) if own == growth else f"{chunk}@{own:g}"


def loopback_mixture(base_url: str, variant: Variant) -> ChatMixtureOfAgents:
    def spec(name: str) -> ProposerSpec:
        return ProposerSpec(model=f"openai:{name}", base_url=base_url, api_key="sk-bench",
                            continuation="prefill")  # fmt: skip

    return ChatMixtureOfAgents(
        proposers=[spec(name) for name in PROPOSERS], aggregator=spec(AGGREGATOR), layers=3,
        max_tokens=TOKENS, timeout=120, **staircase_settings(variant),
    )  # fmt: skip


def staircase_settings(variant: Variant) -> dict[str, Any]:
    """The mixture settings of a variant (staircase off, or its first chunk and growth)."""
    if variant is None:
        return {"staircase": None}
    return {"staircase": variant[0], "staircase_growth": variant[1]}


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


def measure(make: Callable[[Variant], ChatMixtureOfAgents], question: Callable[[int], str],
            variants: dict[str, Variant], runs: int,
            extra: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Median TTFT and wall of each variant (by label, off first); the variants take turns
    within every round."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    mixtures = {name: make(variant) for name, variant in variants.items()}

    async def all_runs() -> None:
        for i in range(runs):
            for name in variants:
                ttft, wall, text, staircase = await timed_stream(mixtures[name], question(i))
                sample = {"ttft_s": ttft, "wall_s": wall, "answer_chars": len(text)}
                if extra is not None:
                    sample.update(extra(staircase))
                samples[name].append(sample)

    asyncio.run(all_runs())
    report: dict[str, Any] = {}
    for variant, rows in samples.items():
        keys = rows[0].keys()
        report[variant] = {key: round(statistics.median(r[key] for r in rows), 3) for key in keys}
    for variant in [name for name in variants if name != "None"]:
        for key in ("ttft", "wall"):
            total = sum(sample[f"{key}_s"] for sample in samples[variant])
            off = sum(sample[f"{key}_s"] for sample in samples["None"])
            report[variant][f"{key}_ratio"] = round(total / off, 3)
    return report


def loopback(variants: dict[str, Variant], runs: int) -> dict[str, Any]:
    with ServerProcess(loopback_scripts(), record_messages=False) as server:
        return measure(lambda variant: loopback_mixture(server.base_url, variant),
                       lambda i: f"Question {i}: what should I see?", variants, runs)  # fmt: skip


def _aggregator_rounds(staircase: dict[str, Any]) -> dict[str, Any]:
    """The aggregator's rounds and the prompt tokens they read anew (the rest was cached)."""
    fresh, whole = (staircase.get(key) or [] for key in ("fresh_prompt_tokens", "prompt_tokens"))

    def mean(values: list[int]) -> float:
        return round(statistics.mean(values), 1) if values else 0.0

    return {"aggregator_calls": len(fresh), "fresh_prompt_tokens_per_call": mean(fresh),
            "prompt_tokens_per_call": mean(whole)}  # fmt: skip


def local(variants: dict[str, Variant], runs: int) -> dict[str, Any]:
    recipe = presets.local()

    def make(variant: Variant) -> ChatMixtureOfAgents:
        return recipe.chat_model(seed=0, temperature=0.0, **staircase_settings(variant))

    make(None).invoke("Hi")  # load every model before timing
    return measure(make, lambda i: LOCAL_QUESTIONS[i % len(LOCAL_QUESTIONS)], variants, runs,
                   _aggregator_rounds)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["loopback", "local"], action="append")
    parser.add_argument(
        "--chunks",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        help="first chunk sizes, N or N@GROWTH (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--growth", type=float, default=DEFAULTS.staircase_growth,
                        help="staircase_growth (default: the setting's)")  # fmt: skip
    args = parser.parse_args()
    parts = args.only or ["loopback", "local"]
    chosen = [parse_variant(text, args.growth) for text in args.chunks]
    variants: dict[str, Variant] = {"None": None}
    variants.update({label(v, args.growth): v for v in chosen})
    if len(variants) != len(chosen) + 1:
        parser.error(f"--chunks names a variant twice: {' '.join(args.chunks)}")
    report: dict[str, Any] = {"growth": args.growth}
    for part in parts:
        report[part] = {"loopback": loopback, "local": local}[part](variants, args.runs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
