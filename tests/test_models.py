"""Model strings and specs become the right LangChain chat models, with the stated defaults."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from langchain_together import ChatTogether

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.models import CLIENT_TIMEOUT_MARGIN_S, model_label, resolve_model, split_provider
from moa_graph.settings import MixtureSettings
from tests.fakes import ScriptedChatModel

PLANTED_KEY = "sk-planted-0123456789abcdef"


@pytest.fixture(autouse=True)
def placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder-openai")
    monkeypatch.setenv("TOGETHER_API_KEY", "placeholder-together")


def test_provider_strings_build_clients_with_reference_defaults() -> None:
    resolved = resolve_model(
        "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
        field="f",
        defaults=MixtureSettings(timeout=9, max_retries=1),
    )
    model = resolved.model
    assert isinstance(model, ChatTogether)
    assert (model.model_name, model.temperature, model.max_tokens) == (
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
        0.7,
        512,
    )
    # The HTTP client gives up only after the mixture's deadline (which reports a timeout and
    # does not retry it), and leaves retrying to the mixture.
    backstop = 9 + CLIENT_TIMEOUT_MARGIN_S
    assert (model.request_timeout, model.max_retries, model.stream_usage) == (backstop, 0, True)
    assert (resolved.policy.timeout, resolved.policy.max_retries) == (9, 1)
    assert resolved.name == "Qwen/Qwen2.5-72B-Instruct-Turbo"
    openai = resolve_model("openai:gpt-4o-mini", field="f", defaults=MixtureSettings()).model
    assert isinstance(openai, ChatOpenAI) and openai.model_name == "gpt-4o-mini"


def test_spec_overrides_defaults_and_points_at_a_compatible_server() -> None:
    spec = ProposerSpec(
        model="openai:llama3.1",
        base_url="http://127.0.0.1:11434/v1",
        api_key=PLANTED_KEY,
        temperature=0.2,
        max_tokens=64,
        name="ollama",
    )
    resolved = resolve_model(spec, field="f", defaults=MixtureSettings())
    assert isinstance(resolved.model, ChatOpenAI)
    assert resolved.model.openai_api_base == "http://127.0.0.1:11434/v1"
    assert (resolved.model.temperature, resolved.model.max_tokens) == (0.2, 64)
    assert resolved.name == "ollama"


def test_api_keys_never_show_in_reprs() -> None:
    spec = ProposerSpec(model="openai:gpt-4o", api_key=PLANTED_KEY)
    moa = ChatMixtureOfAgents(proposers=[spec], aggregator=spec, layers=2)
    assert PLANTED_KEY not in repr(spec)
    assert PLANTED_KEY not in repr(moa) and PLANTED_KEY not in str(moa._identifying_params)


def test_model_instances_are_used_as_configured() -> None:
    model = ScriptedChatModel()
    resolved = resolve_model(model, field="f", defaults=MixtureSettings())
    assert resolved.model is model
    assert resolved.model_name == "fake-model"


def test_missing_key_is_a_value_error_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match=r"proposers\[0\]: cannot create chat model 'openai:gpt"):
        ChatMixtureOfAgents(proposers=["openai:gpt-4o"], aggregator=ScriptedChatModel())


def test_split_provider_and_labels() -> None:
    assert split_provider("gpt-4o", field="f") == (None, "gpt-4o")
    assert split_provider("local:smollm2-135m", field="f") == ("local", "smollm2-135m")
    assert model_label("openai:gpt-4o") == "gpt-4o"
    with pytest.raises(ValueError, match="unknown provider 'ollama3'"):
        split_provider("ollama3:8b", field="f")


@pytest.mark.parametrize(
    ("model", "variable"),
    [("together:Qwen/Qwen2.5-72B-Instruct-Turbo", "TOGETHER_API_KEY"),
     ("openai:gpt-4o-mini", "OPENAI_API_KEY")],
)  # fmt: skip
def test_a_missing_key_names_the_providers_own_variable(
    model: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TOGETHER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=f"proposers\\[0\\]: .*set {variable} in the env") as info:
        resolve_model(model, field="proposers[0]")
    other = {"TOGETHER_API_KEY", "OPENAI_API_KEY"} - {variable}
    assert other.pop() not in str(info.value)
    monkeypatch.setenv(variable, "sk-test-placeholder")
    assert resolve_model(model, field="proposers[0]").model_name == model.partition(":")[2]


def test_a_key_in_the_spec_needs_no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    spec = ProposerSpec(model="together:Qwen/Qwen2.5-72B-Instruct-Turbo", api_key="sk-test-x")
    assert resolve_model(spec, field="aggregator").secret == "sk-test-x"
