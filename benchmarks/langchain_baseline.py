"""The LangChain reference: the baseline's control flow, but every call through ``ChatOpenAI``.

Same ``asyncio.gather`` layers and messages as :mod:`benchmarks.baseline`, with one
``langchain_openai.ChatOpenAI`` per model (same settings) instead of the raw ``openai`` client,
and no LangGraph. Set between the two, it splits moa_graph's overhead into what LangChain's chat
model layer costs and what the graph and moa_graph add on top.
"""

from __future__ import annotations

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from benchmarks.baseline import AGGREGATOR, API_KEY, PROPOSERS, layered_run, messages


def chat_models(base_url: str) -> dict[str, ChatOpenAI]:
    """One ``ChatOpenAI`` per scripted model, with the baseline's settings."""
    settings = {"temperature": 0.7, "max_completion_tokens": 512, "timeout": 120.0}
    return {
        name: ChatOpenAI(
            model=name, base_url=base_url, api_key=SecretStr(API_KEY), max_retries=2, **settings
        )
        for name in [*PROPOSERS, AGGREGATOR]
    }


async def run(models: dict[str, ChatOpenAI], question: str, layers: int = 3) -> str:
    """One MoA run through LangChain chat models; the aggregator's answer."""

    async def ask(model: str, q: str, references: list[str]) -> str:
        return (await models[model].ainvoke(messages(q, references))).text

    return await layered_run(ask, question, layers)
