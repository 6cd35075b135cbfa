"""The named recipes have the paper's shapes and build without any network call."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_graph import ChatMixtureOfAgents, presets
from moa_graph.presets import load_recipe
from tests.fakes import ScriptedChatModel


@pytest.fixture(autouse=True)
def placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder-openai")
    monkeypatch.setenv("TOGETHER_API_KEY", "placeholder-together")


def test_paper_recipes_have_the_paper_shapes() -> None:
    moa, lite, gpt4o = presets.moa(), presets.moa_lite(), presets.moa_gpt4o()
    assert (moa.layers, len(moa.proposers), moa.aggregator) == (
        3,
        6,
        "together:Qwen/Qwen1.5-110B-Chat",
    )
    assert (lite.layers, lite.aggregator) == (2, "together:Qwen/Qwen1.5-72B-Chat")
    assert gpt4o.aggregator == "openai:gpt-4o"
    for recipe in (moa, lite, gpt4o):
        assert "Table 2" in getattr(presets, recipe.name.replace("-", "_")).__doc__


@pytest.mark.parametrize("name", ["moa", "moa-lite", "moa-gpt4o", "together"])
def test_remote_recipes_build_chat_models_and_graphs(name: str) -> None:
    recipe = presets.get_preset(name)
    model = recipe.chat_model()
    assert isinstance(model, ChatMixtureOfAgents)
    assert model._plan.layers == recipe.layers
    assert len(model._plan.proposer_layers[0]) == len(recipe.proposers)
    assert set(recipe.graph().nodes) >= {"propose", "aggregate"}


def test_self_moa_samples_one_model_n_times() -> None:
    model = ScriptedChatModel(reply="x")
    moa = presets.self_moa(model, n=5).chat_model()
    moa.invoke("q")
    assert len(model.calls) == 6  # five samples, then the same model aggregates
    with pytest.raises(ValueError, match="n: the number of samples"):
        presets.self_moa(model, n=0)


def test_overrides_and_unknown_names() -> None:
    lite = presets.moa_lite().chat_model(layers=3, min_proposals=2)
    assert lite._plan.layers == 3 and lite.min_proposals == 2
    with pytest.raises(ValueError, match="preset: unknown 'gpt5'"):
        presets.get_preset("gpt5")


def test_recipes_carry_an_aggregation_strategy(tmp_path: Path, local_models_present: None) -> None:

    voting = presets.get_preset("local-vote").chat_model()
    assert voting.plan.options.aggregation == "vote" and voting.seed == 0
    assert [slot.name for slot in voting.plan.proposer_layers[0]] == [
        f"qwen2.5-coder-1.5b #{k}" for k in (1, 2, 3)
    ]
    path = tmp_path / "rank.toml"
    path.write_text(
        'aggregator = "openai:gpt-4o"\nproposers = ["openai:gpt-4o-mini"]\n'
        'aggregation = "rank"\nshuffle_references = true\nseed = 3\n'
    )
    ranked = load_recipe(path).chat_model()
    assert ranked.plan.options.aggregation == "rank" and ranked.plan.options.shuffle_references
    path.write_text(
        'aggregator = "openai:gpt-4o"\nproposers = ["openai:gpt-4o-mini"]\naggregation = "avg"\n'
    )
    with pytest.raises(ValueError, match=r"aggregation\n  Input should be 'synthesize', 'vote'"):
        load_recipe(path).chat_model()
