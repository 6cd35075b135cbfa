"""Settings a type checker sees (issue 30, point 6): ``create_moa_graph``'s keywords are
``Unpack[MixtureSettingsDict]``, kept equal to the declaration; ``MoAContext`` is a static
``TypedDict`` kept equal to the per-run keys; mypy refuses a misspelt or mistyped setting."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from moa_graph import MoAContext, create_moa_graph
from moa_graph.engine.run_choices import CALL_KEYS, RUN_KEYS
from moa_graph.settings import RUN_CHOICES, SETTINGS, MixtureSettings, MixtureSettingsDict
from moa_graph.strategies import Strategy

ROOT = Path(__file__).resolve().parents[1]


def static(annotation: object) -> object:
    """The type a checker sees: ``Annotated[X, validators]`` is ``X``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def test_the_settings_typeddict_is_the_declaration() -> None:
    hints = typing.get_type_hints(MixtureSettingsDict)
    declared = {
        name: static(field.annotation) for name, field in MixtureSettings.model_fields.items()
    }
    assert list(hints) == list(declared)  # the same names, in the same order
    for name, annotation in declared.items():
        assert hints[name] == annotation, name
    assert not MixtureSettingsDict.__required_keys__  # every setting is optional


def test_create_moa_graph_takes_the_typed_settings() -> None:
    parameter = inspect.signature(create_moa_graph, eval_str=False).parameters
    source = inspect.getsource(create_moa_graph)
    assert "**settings: Unpack[MixtureSettingsDict]" in source
    assert set(SETTINGS) <= set(parameter)  # help() and editors still list each keyword


def test_moa_context_is_a_static_typeddict_of_the_run_keys() -> None:
    assert MoAContext.__module__ == "moa_graph.engine.graph" and MoAContext.__total__ is False
    hints = typing.get_type_hints(MoAContext)
    assert list(hints) == [*RUN_KEYS, *CALL_KEYS]
    for key in RUN_KEYS:
        expected = (
            RUN_CHOICES[key].annotation if key in RUN_CHOICES else static(SETTINGS[key].annotation)
        )
        assert hints[key] == expected, key
    assert hints["aggregation"] == str | Strategy
    for key, annotation in CALL_KEYS.items():
        assert hints[key] == annotation, key


SNIPPET = """\
from langchain_core.language_models import GenericFakeChatModel

from moa_graph import MoAContext, create_moa_graph

model = GenericFakeChatModel(messages=iter([]))
create_moa_graph([model], aggregator=model, first_kk=2)
create_moa_graph([model], aggregator=model, first_k="two")
create_moa_graph([model], aggregator=model, first_k=2, aggregation="vote", seed=None)
context: MoAContext = {"layers": 2, "temperature": 0.2}
wrong: MoAContext = {"layer": 2}
"""


def test_mypy_refuses_a_misspelt_or_mistyped_setting(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "snippet.py").write_text(SNIPPET)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
         "--ignore-missing-imports", "--cache-dir", str(tmp_path / "cache"), "snippet.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT)},
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    lines = {int(line.split(":")[1]) for line in errors}
    assert lines == {6, 7, 10}, done.stdout
    assert '"first_kk"' in errors[0] and '"first_k"' in done.stdout
    assert len(errors) == 3, done.stdout


def test_the_context_has_a_json_schema_for_servers_and_studio() -> None:
    # LangGraph Server and Studio publish the graph's context schema: a strategy is its name there
    from langchain_core.language_models import GenericFakeChatModel

    def fake() -> GenericFakeChatModel:
        return GenericFakeChatModel(messages=iter([]))

    graph = create_moa_graph([fake()], aggregator=fake(), layers=2).compile()
    schema = graph.get_context_jsonschema()
    assert set(schema["properties"]) == set(RUN_KEYS) | set(CALL_KEYS)
    assert schema["properties"]["aggregation"]["type"] == "string"
