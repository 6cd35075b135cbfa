"""Nothing silently ignored: a field of ``ChatMixtureOfAgents`` assigned after construction
takes effect on the next run, or is refused naming it (issue 26, point 6)."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import ValidationError

from moa_graph import ChatMixtureOfAgents
from moa_graph.settings import SETTINGS
from tests.fakes import ScriptedChatModel


def count_words(text: str) -> int:
    return len(text.split())


# One valid non-default value of every setting (a new setting needs one here).
CHANGED: dict[str, Any] = {
    "prompt": "Combine these answers:",
    "temperature": 0.2,
    "max_tokens": 64,
    "timeout": 5.0,
    "max_retries": 0,
    "rate_limits": {"openai": 2.0},
    "min_proposals": 2,
    "fail_mode": "fail_fast",
    "first_k": 1,
    "layer_timeout": 9.0,
    "fallback_to_aggregator": True,
    "max_reference_tokens": 100,
    "token_counter": count_words,
    "max_concurrent_calls": 2,
    "max_input_chars": 1000,
    "aggregation": "rank",
    "answer_extractor": "choice",
    "shuffle_references": True,
    "seed": 7,
    "confidence_temperature": 0.5,
    "aggregation_window": 2,
    "early_exit": True,
    "staircase": 8,
    "staircase_growth": 1.5,
}


def models(*replies: str) -> list[ScriptedChatModel]:
    return [ScriptedChatModel(reply=r, model_name=f"m{i}") for i, r in enumerate(replies)]


def make_moa(**kwargs: Any) -> ChatMixtureOfAgents:
    proposers = models("4", "4", "5")
    kwargs.setdefault("layers", 2)
    return ChatMixtureOfAgents(
        proposers=proposers, aggregator=ScriptedChatModel(reply="synthesized"), **kwargs
    )


def layers_run(result: Any) -> int:
    return len({p["layer"] for p in result.response_metadata["proposals"]})


def test_every_setting_has_a_changed_value_here() -> None:
    assert set(CHANGED) == set(SETTINGS)
    assert all(CHANGED[name] != spec.default for name, spec in SETTINGS.items())


@pytest.mark.parametrize("name", list(SETTINGS))
def test_an_assigned_setting_is_what_a_constructed_one_is(name: str) -> None:
    """Assigned or given to the constructor, a setting gives the same plan and identity, or
    the same refusal (and then nothing changes)."""
    value = CHANGED[name]
    moa = make_moa()
    try:
        expected = make_moa(**{name: value})
    except ValidationError as refusal:
        with pytest.raises(ValidationError) as assigned:
            setattr(moa, name, value)
        assert assigned.value.errors()[0]["msg"] == refusal.errors()[0]["msg"]
        assert getattr(moa, name) == SETTINGS[name].default
        assert moa.plan.options == make_moa().plan.options
        return
    setattr(moa, name, value)
    assert getattr(moa, name) == getattr(expected, name)
    assert moa.plan.options == expected.plan.options
    assert moa._identifying_params == expected._identifying_params
    assert moa.plan.options != make_moa().plan.options


def test_layers_assigned_after_construction_run_on_the_next_call() -> None:
    """The issue's example: ``layers=2`` then ``moa.layers = 3`` runs three layers."""
    moa = make_moa()
    assert layers_run(moa.invoke("hi")) == 1
    moa.layers = 3
    assert layers_run(moa.invoke("hi")) == 2
    assert moa.plan.layers == 3 and moa._identifying_params["layers"] == 3


async def test_aggregation_assigned_after_construction_is_used_sync_async_and_streaming() -> None:
    moa = make_moa()
    assert moa.invoke("2 + 2?").content == "synthesized"
    moa.aggregation = "vote"
    result = moa.invoke("2 + 2?")
    assert result.content == "4" and "moa_votes" in result.response_metadata
    assert (await moa.ainvoke("2 + 2?")).content == "4"
    assert "".join(str(chunk.content) for chunk in moa.stream("2 + 2?")) == "4"


def test_first_k_assigned_after_construction_cuts_stragglers_off() -> None:
    fast = ScriptedChatModel(reply="fast", model_name="fast")
    slow = ScriptedChatModel(reply="slow", model_name="slow", delay=1.5)
    moa = ChatMixtureOfAgents(
        proposers=[fast, slow], aggregator=ScriptedChatModel(reply="done"), layers=2
    )
    moa.first_k = 1
    statuses = {p["proposer"]: p["status"] for p in moa.invoke("hi").response_metadata["proposals"]}
    assert statuses == {"fast": "answered", "slow": "cancelled"}


def test_temperature_assigned_after_construction_reaches_models_built_from_strings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    moa = ChatMixtureOfAgents(
        proposers=["openai:gpt-4o-mini"], aggregator="openai:gpt-4o-mini", layers=2
    )
    assert moa.plan.proposer_layers[0][0].model.temperature == 0.7  # type: ignore[attr-defined]
    moa.temperature = 0.2
    moa.max_tokens = 64
    model = moa.plan.proposer_layers[0][0].model
    assert (model.temperature, model.max_tokens) == (0.2, 64)  # type: ignore[attr-defined]
    assert moa._get_ls_params()["ls_temperature"] == 0.2


def test_proposers_and_aggregator_assigned_after_construction() -> None:
    moa = make_moa()
    moa.proposers = models("x", "y")
    moa.aggregator = ScriptedChatModel(reply="new aggregator", model_name="agg2")
    result = moa.invoke("hi")
    assert result.content == "new aggregator" and moa.model_name == "moa:agg2"
    assert [p["text"] for p in result.response_metadata["proposals"]] == ["x", "y"]


def test_an_invalid_assignment_is_refused_naming_the_setting_and_changes_nothing() -> None:
    moa = make_moa()
    for name, value in [("first_k", 0), ("aggregation", "vot"), ("temperature", "hot"),
                        ("min_proposals", 4), ("layers", 1), ("first_kk", 2)]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            setattr(moa, name, value)
    assert (moa.first_k, moa.aggregation, moa.temperature, moa.min_proposals, moa.layers) == (
        None, "synthesize", 0.7, 1, 2,
    )  # fmt: skip
    assert moa.invoke("hi").content == "synthesized"


def test_a_list_or_dict_edited_in_place_is_seen_by_the_next_run() -> None:
    moa = make_moa()
    moa.proposers.append(ScriptedChatModel(reply="6", model_name="m3"))
    assert len(moa.invoke("hi").response_metadata["proposals"]) == 4
    moa.rate_limits = {"openai": 1.0}
    assert moa.rate_limits is not None
    moa.rate_limits["together"] = 3.0
    assert moa.plan.options.rate_limits == {"openai": 1.0, "together": 3.0}


def test_model_copy_with_an_update_runs_the_update_and_leaves_the_original() -> None:
    moa = make_moa()
    deeper = moa.model_copy(update={"layers": 3})
    assert layers_run(deeper.invoke("hi")) == 2
    assert layers_run(moa.invoke("hi")) == 1


def test_a_setting_assigned_on_a_kept_mixture_reaches_its_threads() -> None:
    kept = make_moa().with_checkpointer(InMemorySaver())
    kept.layers = 3
    assert layers_run(kept.invoke("hi", moa_thread="t1")) == 2
    assert layers_run(kept.invoke("hi", moa_thread="t1")) == 2  # the finished run, again


def test_fields_read_by_every_call_still_apply() -> None:
    moa = make_moa()
    moa.stop = ["thes"]
    assert moa.invoke("hi").content == "syn"
    moa.stop = None
    moa.streaming = True
    assert moa.invoke("hi").content == "synthesized"
