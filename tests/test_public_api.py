"""The public names are the contract (DESIGN.md section 3); docstring examples must run."""

from __future__ import annotations

import doctest
import importlib

import pytest

import moa_graph

CONTRACT = {
    "ChatMixtureOfAgents",
    "create_moa_graph",
    "create_aggregator",
    "MoAState",
    "Proposal",
    "AGGREGATE_AND_SYNTHESIZE_PROMPT",
    "presets",
}
EXPORTED = CONTRACT | {
    "AggregatorError",
    "MoAContext",
    "MoAError",
    "MoAInput",
    "MoAOutput",
    "ProposalsFailedError",
    "ProposerSpec",
    "Strategy",
    "ThreadInUseError",
    "as_node",
    "inject_references",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(moa_graph.__all__) == EXPORTED
    assert set(moa_graph.__all__) >= CONTRACT
    for name in moa_graph.__all__:
        assert getattr(moa_graph, name) is not None


DOCUMENTED_MODULES = ["prompts", "state", "models", "engine.plan", "aggregator", "engine.graph"]
DOCUMENTED_MODULES += ["chat_model", "presets", "answers", "aggregation", "strategies.rank"]
DOCUMENTED_MODULES += ["settings", "strategies"]


@pytest.mark.parametrize("module", DOCUMENTED_MODULES)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"moa_graph.{module}"), verbose=False)
    assert result.failed == 0
    assert result.attempted > 0


def test_public_factories_document_an_example() -> None:
    for factory in (
        moa_graph.create_moa_graph,
        moa_graph.create_aggregator,
        moa_graph.ChatMixtureOfAgents,
        moa_graph.ProposerSpec,
    ):
        assert "Example:" in (factory.__doc__ or "")
