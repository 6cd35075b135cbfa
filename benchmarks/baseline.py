"""The hand-written baseline: 3-layer MoA with ``asyncio.gather`` over the ``openai`` client.

The shape of the paper's 50-line example (togethercomputer/MoA ``moa.py``), extended to layers:
layer 1 proposers get the question; every proposer of a later layer and the aggregator get the
Aggregate-and-Synthesize system prompt with the previous layer's numbered answers. Same sampling
settings, timeout and retries as the mixture's defaults (temperature 0.7, max_tokens 512,
timeout 120 s, 2 retries), one shared ``AsyncOpenAI`` client (connection pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial

from openai import AsyncOpenAI

PROPOSERS = ["p1", "p2", "p3", "p4"]
AGGREGATOR = "agg"
API_KEY = "sk-bench-placeholder"
# Table 1 of the paper, as in togethercomputer/MoA (kept here so this process imports no
# LangChain; ``benchmarks.perf`` checks it equals ``moa_graph.AGGREGATE_AND_SYNTHESIZE_PROMPT``).
AGGREGATE_AND_SYNTHESIZE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n"
    "\n"
    "Responses from models:"
)


def client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key=API_KEY, timeout=120.0, max_retries=2)


def _system(references: list[str]) -> str:
    return AGGREGATE_AND_SYNTHESIZE_PROMPT + "".join(
        f"\n{i + 1}. {ref.strip()}" for i, ref in enumerate(references)
    )


def messages(question: str, references: list[str]) -> list[dict]:
    """The chat messages of one call: the question, with the references' system prompt if any."""
    user = {"role": "user", "content": question}
    if not references:
        return [user]
    return [{"role": "system", "content": _system(references)}, user]


async def _ask(api: AsyncOpenAI, model: str, question: str, references: list[str]) -> str:
    response = await api.chat.completions.create(
        model=model, messages=messages(question, references), temperature=0.7, max_tokens=512
    )  # type: ignore[call-overload]
    return response.choices[0].message.content or ""


Ask = Callable[[str, str, list[str]], Awaitable[str]]
"""One call: ``(model, question, references) -> answer``."""


async def proposer_layers(ask: Ask, question: str, layers: int = 3) -> list[str]:
    """The proposer layers over any client (``gather`` per layer); the last layer's answers."""
    references: list[str] = []
    for _ in range(layers - 1):
        references = list(await asyncio.gather(*[ask(m, question, references) for m in PROPOSERS]))
    return references


async def layered_run(ask: Ask, question: str, layers: int = 3) -> str:
    """The MoA control flow over any client: the proposer layers, then the aggregator."""
    return await ask(AGGREGATOR, question, await proposer_layers(ask, question, layers))


async def run(api: AsyncOpenAI, question: str, layers: int = 3) -> str:
    """One MoA run; the aggregator's answer (not streamed)."""
    return await layered_run(partial(_ask, api), question, layers)


async def run_streaming(api: AsyncOpenAI, question: str, layers: int = 3) -> tuple[str, float]:
    """One MoA run with the aggregator streamed; the answer and seconds to its first token."""
    started = time.perf_counter()
    references = await proposer_layers(partial(_ask, api), question, layers)
    stream = await api.chat.completions.create(
        model=AGGREGATOR, messages=messages(question, references), temperature=0.7,
        max_tokens=512, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    first = None
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts), first if first is not None else float("nan")
