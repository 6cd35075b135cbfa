"""Every setting is declared once and reaches every surface with the same name and default.

The surfaces: ``create_moa_graph`` keywords, ``ChatMixtureOfAgents`` fields, recipes (Python and
TOML), ``moa-graph`` flags, ``moa-graph eval`` system options and, for per-run settings, a run's
context. An unknown name is refused on each of them, naming the closest valid one.
"""

from __future__ import annotations

import argparse
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

from moa_graph import ChatMixtureOfAgents, create_moa_graph, presets, strategies
from moa_graph.cli.main import build_mixture, build_parser
from moa_graph.cli.options import mixture_overrides
from moa_graph.evaluation.systems import parse_system
from moa_graph.settings import SETTINGS, MixtureSettings, SettingSpec, per_run_keys
from tests.fakes import ScriptedChatModel

# Models whose servers continue a partial answer, so that every setting (staircase too) applies.
PROPOSERS = [{"model": f"openai:{name}", "continuation": "prefill"} for name in ("p1", "p2", "p3")]
AGGREGATOR = {"model": "openai:agg", "continuation": "prefill"}
TOML_MODELS = (
    'aggregator = { model = "openai:agg", continuation = "prefill" }\n'
    'proposers = [{ model = "openai:p1", continuation = "prefill" },'
    ' { model = "openai:p2", continuation = "prefill" }]\n'
)


def count_words(text: str) -> int:
    """A token counter a recipe or a flag can name as ``tests.test_settings:count_words``."""
    return len(text.split())


def sample(spec: SettingSpec) -> tuple[Any, str, str]:
    """A valid value other than the default: as Python, as a flag / eval option, as TOML."""
    special = {
        "prompt": ("Combine these answers.", "Combine these answers.", '"Combine these answers."'),
        "aggregation": ("vote", "vote", '"vote"'),
        "answer_extractor": ("choice", "choice", '"choice"'),
        "token_counter": (count_words, "tests.test_settings:count_words",
                          '"tests.test_settings:count_words"'),
        "rate_limits": ({"together": 2.0}, "together=2", "{ together = 2.0 }"),
        "fail_mode": ("fail_fast", "fail_fast", '"fail_fast"'),
    }  # fmt: skip
    if spec.name in special:
        return special[spec.name]
    base, default = spec.base_type, spec.default
    bounds = dict(spec.bounds)
    if base is bool:
        value = not default
        return value, str(value).lower(), str(value).lower()
    if base is int:
        value = 2 if default in (None, 1) else default + 1
        value = max(value, int(bounds.get("ge", value)))
        return value, str(value), str(value)
    if base is float:
        value = 1.5 if default is None else default / 2
        return value, str(value), str(value)
    raise AssertionError(f"no sample value for {spec.name}: teach this test its type")


def test_a_setting_is_one_field_with_a_doc_and_every_default_agrees() -> None:
    signature = inspect.signature(create_moa_graph).parameters
    for name, spec in SETTINGS.items():
        assert spec.doc, f"{name} has no one-line doc"
        assert signature[name].default == spec.default, name
        assert signature[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert ChatMixtureOfAgents.model_fields[name].default == spec.default, name
        assert f"{name} (default " in (create_moa_graph.__doc__ or ""), name
        assert f"{name} (default " in (ChatMixtureOfAgents.__doc__ or ""), name


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_setting_reaches_python_recipes_toml_flags_and_eval(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-placeholder")
    spec = SETTINGS[name]
    value, text, toml = sample(spec)
    assert value != spec.default
    # a refinement counts in a mixture's identity only while the setting it refines is on
    parent = {} if spec.refines is None else {spec.refines: sample(SETTINGS[spec.refines])}
    on = {key: parent_value for key, (parent_value, _, _) in parent.items()}
    on_text = "".join(f",{key}={parent_text}" for key, (_, parent_text, _) in parent.items())
    # Python: the graph factory and the chat model
    graph = create_moa_graph(PROPOSERS, aggregator=AGGREGATOR, layers=2, **{name: value})
    assert graph is not None
    moa = ChatMixtureOfAgents(proposers=PROPOSERS, aggregator=AGGREGATOR, layers=2,
                              **{name: value, **on})  # fmt: skip
    assert getattr(moa.plan.options, name) == value
    assert moa._identifying_params[name] == spec.identity(value)
    # a preset's recipe, and a TOML recipe
    recipe = presets.together_quickstart().with_options(**{name: value})
    assert recipe.options[name] == value
    path = tmp_path / "recipe.toml"
    path.write_text(f"{TOML_MODELS}{name} = {toml}\n")
    assert getattr(presets.load_recipe(path).chat_model().plan.options, name) == value
    # the command line: --name-with-dashes, its help naming the default
    parser = build_parser()
    args = parser.parse_args(["ask", "--config", str(path), *_flag(spec, text), "Q"])
    assert getattr(build_mixture(args).plan.options, name) == value
    ask_help = _subcommand_help(parser, "ask")
    assert spec.flag in ask_help and f"(default: {spec.display(spec.default)})" in ask_help
    # an eval system option (an embedded model: it continues partial answers)
    system = parse_system(f"self-moa:local:smollm2-135m,n=3,{name}={text}{on_text}")
    assert system.config[name] == spec.identity(value)


def test_flags_unset_an_optional_setting_and_negate_a_boolean() -> None:
    args = build_parser().parse_args(["ask", "--timeout", "none", "--no-early-exit", "Q"])
    assert mixture_overrides(args) == {"timeout": None, "early_exit": False}
    assert mixture_overrides(build_parser().parse_args(["ask", "Q"])) == {}


def test_per_run_settings_are_run_choices_checked_like_the_setting() -> None:
    per_run = [name for name, spec in SETTINGS.items() if spec.per_run]
    assert per_run and set(per_run) <= set(per_run_keys())
    aggregator = ScriptedChatModel(reply="synthesized")
    proposers = [ScriptedChatModel(reply="The answer is 7") for _ in range(3)]
    graph = create_moa_graph(proposers, aggregator=aggregator, layers=2).compile()
    voted = graph.invoke({"messages": [("user", "7?")]}, context={"aggregation": "vote"})
    assert voted["messages"][-1].text == "The answer is 7" and aggregator.calls == []
    with pytest.raises(ValueError, match="aggregation: must be one of synthesize, vote"):
        graph.invoke({"messages": [("user", "7?")]}, context={"aggregation": "vot"})


def test_unknown_names_are_refused_everywhere_naming_the_closest(tmp_path: Path) -> None:
    hint = "did you mean 'first_k'?"
    model = ScriptedChatModel()
    with pytest.raises(ValueError, match=hint):
        create_moa_graph([model], aggregator=model, first_kk=2)
    with pytest.raises(ValueError, match=hint):
        ChatMixtureOfAgents(proposers=[model], aggregator=model, first_kk=2)
    with pytest.raises(ValueError, match=hint):
        presets.moa_lite().with_options(first_kk=2)
    with pytest.raises(ValueError, match=hint):
        presets.moa_lite().chat_model(first_kk=2)
    path = tmp_path / "recipe.toml"
    path.write_text('aggregator = "openai:agg"\nproposers = ["openai:p1"]\nfirst_kk = 2\n')
    with pytest.raises(ValueError, match=hint):
        presets.load_recipe(path)
    with pytest.raises(ValueError, match=hint):
        parse_system("self-moa:openai:p1,n=3,first_kk=2")
    moa = ChatMixtureOfAgents(proposers=[model], aggregator=model, layers=2)
    with pytest.raises(ValueError, match="did you mean 'aggregation'"):
        moa.invoke("Q", {"configurable": {"moa": {"agregation": "vote"}}})


def test_strategy_names_come_from_the_registry() -> None:
    assert SETTINGS["aggregation"].choices == strategies.names()
    parser = build_parser()
    help_text = _subcommand_help(parser, "ask")
    for strategy in strategies.all_strategies():
        assert strategy.name in help_text and strategy.summary[:30] in help_text.replace("\n", " ")
    for name in strategies.names():
        assert MixtureSettings(aggregation=name).aggregation == name


def _flag(spec: SettingSpec, text: str) -> list[str]:
    if spec.base_type is bool:
        return [spec.flag if text == "true" else "--no-" + spec.flag[2:]]
    return [spec.flag, text]


def _subcommand_help(parser: argparse.ArgumentParser, command: str) -> str:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    formatter_width = 1000  # one line per option, so phrases are not wrapped apart
    sub = subparsers.choices[command]
    sub.formatter_class = typing.cast(
        Any, lambda prog: argparse.HelpFormatter(prog, width=formatter_width)
    )
    return sub.format_help()
