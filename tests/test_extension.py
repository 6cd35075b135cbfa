"""Open to extension (issue 30, point 5): a ``Strategy`` instance as ``aggregation``, strategies
from other distributions through the ``moa_graph.strategies`` entry points, and the local
engine's backend protocol."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_graph import ChatMixtureOfAgents, Strategy, create_moa_graph, presets, strategies
from moa_graph.settings import SETTINGS, settings_from
from tests.fakes import ScriptedChatModel


class Longest(Strategy):
    """The longest reference, verbatim (no aggregator call)."""

    name, summary, order = "longest", "the longest reference, verbatim", 90
    picks_reference = True

    def flow(self, steps):  # type: ignore[no-untyped-def]
        longest = max(range(len(steps.refs)), key=lambda i: len(steps.refs[i]))
        return steps.verbatim(longest)
        yield  # a generator, even when it makes no call


def mixture() -> tuple[list[ScriptedChatModel], ScriptedChatModel]:
    proposers = [ScriptedChatModel(reply=r) for r in ("short", "the longest one", "mid one")]
    return proposers, ScriptedChatModel(reply="synthesized")


def test_strategy_is_public() -> None:
    import moa_graph

    assert moa_graph.Strategy is strategies.Strategy and "Strategy" in moa_graph.__all__


def test_a_strategy_instance_is_an_aggregation_on_the_chat_model_graph_and_recipes() -> None:
    proposers, aggregator = mixture()
    moa = ChatMixtureOfAgents(
        proposers=proposers, aggregator=aggregator, layers=2, aggregation=Longest()
    )
    result = moa.invoke("Which?")
    assert result.content == "the longest one" and aggregator.calls == []
    assert result.response_metadata["moa_aggregation"] == "longest"
    assert moa._identifying_params["aggregation"] == "longest"  # a name, for cache keys
    json.dumps(moa._identifying_params)

    graph = create_moa_graph(proposers, aggregator=aggregator, layers=2, aggregation=Longest())
    state = graph.compile().invoke({"messages": [("user", "Which?")]})
    assert state["messages"][-1].content == "the longest one"

    recipe = presets.self_moa(proposers[1], n=2).with_options(aggregation=Longest())
    assert recipe.chat_model().plan.strategy.name == "longest"
    assert SETTINGS["aggregation"].display(Longest()) == "longest"


def test_a_strategy_instance_per_run_and_the_checks_that_name_it() -> None:
    proposers, aggregator = mixture()
    graph = create_moa_graph(proposers, aggregator=aggregator, layers=2).compile()
    state = graph.invoke({"messages": [("user", "Which?")]}, context={"aggregation": Longest()})
    assert state["messages"][-1].content == "the longest one"
    with pytest.raises(ValueError, match="aggregation='longest' picks one reference"):
        create_moa_graph(proposers, aggregator=aggregator, aggregation=Longest(),
                         aggregation_window=2)  # fmt: skip
    with pytest.raises(ValueError, match="aggregation"):
        settings_from({"aggregation": object()})


# -- entry points ---------------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution installed into a directory on ``sys.path``: a module and its
    ``*.dist-info`` with an ``entry_points.txt`` (what ``pip install`` would write)."""
    (tmp_path / "moa_plugin_longest.py").write_text(
        textwrap.dedent(
            """
            from moa_graph import Strategy

            class Longest(Strategy):
                name, summary, order = "longest", "the longest reference, verbatim", 90
                picks_reference = True

                def flow(self, steps):
                    longest = max(range(len(steps.refs)), key=lambda i: len(steps.refs[i]))
                    return steps.verbatim(longest)
                    yield

            LONGEST = Longest()
            BROKEN = "not a strategy"
            """
        )
    )
    info = tmp_path / "moa_plugin_longest-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: moa-plugin-longest\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[moa_graph.strategies]\n"
        "longest = moa_plugin_longest:LONGEST\n"
        "vote = moa_plugin_longest:LONGEST\n"  # a built-in name: skipped
        "broken = moa_plugin_longest:BROKEN\n"  # not a Strategy: skipped
        "missing = moa_plugin_no_such_module:X\n"  # cannot be imported: skipped
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    strategies.refresh()
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("moa_plugin_longest", None)
    strategies.refresh()


def test_an_entry_point_strategy_is_a_valid_aggregation_name(plugin: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert strategies.names()[-1] == "longest" and strategies.names().count("vote") == 1
    skipped = "\n".join(str(w.message) for w in caught)
    for name in ("vote", "broken", "missing"):
        assert f"entry point {name} = " in skipped
    assert "longest" in SETTINGS["aggregation"].choices  # type: ignore[operator]
    proposers, aggregator = mixture()
    moa = ChatMixtureOfAgents(
        proposers=proposers, aggregator=aggregator, layers=2, aggregation="longest"
    )
    assert moa.invoke("Which?").content == "the longest one" and aggregator.calls == []
    graph = create_moa_graph(proposers, aggregator=aggregator, layers=2).compile()
    state = graph.invoke({"messages": [("user", "Which?")]}, context={"aggregation": "longest"})
    assert state["messages"][-1].content == "the longest one"


def test_an_entry_point_strategy_on_recipes_and_the_command_line(
    plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moa_graph.cli import main
    from moa_graph.cli.options import strategies_table

    warnings.simplefilter("ignore")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'layers = 2\naggregator = "openai:agg"\nproposers = ["openai:p1", "openai:p2"]\n'
        'aggregation = "longest"\n'
    )
    assert presets.load_recipe(recipe).options["aggregation"] == "longest"
    assert "| `longest` | the longest reference, verbatim |" in strategies_table()
    assert main(["settings"]) == 0
    assert "| `longest` |" in capsys.readouterr().out


def test_ask_and_serve_take_an_entry_point_strategy(
    plugin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moa_graph.cli import main
    from moa_graph.testing import ModelScript, OpenAICompatibleServer

    warnings.simplefilter("ignore")
    scripts = {
        "p1": ModelScript(reply="short"),
        "p2": ModelScript(reply="the longest one"),
        "agg": ModelScript(reply="synthesized"),
    }
    with OpenAICompatibleServer(scripts=scripts) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-placeholder")
        argv = ["--proposer", "openai:p1", "--proposer", "openai:p2", "--aggregator",
                "openai:agg", "--layers", "2", "--staircase", "none",
                "--aggregation", "longest"]  # fmt: skip
        assert main(["ask", *argv, "Which?"]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip() == "the longest one"
        assert server.request_count("agg") == 0
    from moa_graph.cli.main import build_parser

    parsed = build_parser().parse_args(["serve", *argv])
    assert parsed.aggregation == "longest"


# -- the local backend protocol ---------------------------------------------------------------


def test_the_embedded_engine_is_a_local_backend() -> None:
    from moa_graph.backend import BackendTraits, LocalBackend, traits_of
    from moa_graph.local import ChatLocalModel

    model = ChatLocalModel(model="smollm2-135m", slots=3)  # loads lazily: no weights needed
    assert isinstance(model, LocalBackend)
    assert traits_of(model.bind(temperature=0.1)) == BackendTraits(
        continuation="prefill", samples_in_one_request=True, max_samples_per_request=3,
        cheap_logprobs=True, takes_turns=True,
    )  # fmt: skip
    assert not isinstance(ScriptedChatModel(), LocalBackend)
    assert traits_of(ScriptedChatModel()) == BackendTraits()


class Engine(ScriptedChatModel):
    """A backend of one's own: it draws samples in one request, two at most, and continues."""

    def moa_traits(self):  # type: ignore[no-untyped-def]
        from moa_graph.backend import BackendTraits

        return BackendTraits(
            continuation="vllm", samples_in_one_request=True, max_samples_per_request=2,
            takes_turns=True,
        )  # fmt: skip


def test_a_backend_of_ones_own_shapes_the_plan_through_the_protocol() -> None:
    from moa_graph import ProposerSpec

    moa = ChatMixtureOfAgents(
        proposers=[ProposerSpec(model=Engine(reply="7"), samples=3)],
        aggregator=Engine(reply="7"), layers=2,
    )  # fmt: skip
    slot = moa.plan.proposer_layers[0][0]
    assert (slot.continuation, slot.takes_turns) == ("vllm", True)
    assert (slot.samples_in_one_request, slot.samples_per_request) == (True, 2)
    assert moa.plan.aggregator.continuation == "vllm"


def test_no_moa_attribute_is_read_with_getattr_outside_the_protocol() -> None:
    """The engine asks ``traits_of`` (the protocol); ``models.declared`` stays for callers."""
    root = Path(__file__).resolve().parents[1] / "moa_graph"
    for path in root.rglob("*.py"):
        if path.name == "backend.py":
            continue
        text = path.read_text()
        assert "declared(" not in text.replace("def declared(", ""), path
        assert 'getattr(model, "moa_' not in text and 'getattr(self, "moa_' not in text, path


def test_the_run_event_streams_shape_names_a_strategy_instance() -> None:
    from moa_graph.serve.run_events import run_shape

    proposers, aggregator = mixture()
    moa = ChatMixtureOfAgents(
        proposers=proposers, aggregator=aggregator, layers=2, aggregation=Longest()
    )
    shape = run_shape(moa.plan)
    assert shape["aggregation"] == "longest"
    json.dumps(shape)
