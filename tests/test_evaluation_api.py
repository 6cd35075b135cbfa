"""The evaluation package's public names, and that its docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import moa_graph.evaluation as evaluation

MODULES = [
    "cache",
    "cli",
    "costs",
    "datasets",
    "exporters",
    "judge",
    "langsmith_eval",
    "packages",
    "progress",
    "report",
    "runner",
    "scoring",
    "systems",
]


def test_all_names_exist_and_nothing_public_is_missing() -> None:
    assert len(evaluation.__all__) == len(set(evaluation.__all__))
    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None
    for name in ("run_experiment", "single", "moa", "self_moa", "best_of_n_ranker", "main_eval"):
        assert name in evaluation.__all__


@pytest.mark.parametrize("module", [m for m in MODULES if m != "cli"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(
        importlib.import_module(f"moa_graph.evaluation.{module}"),
        optionflags=doctest.ELLIPSIS,
        verbose=False,
    )
    assert result.failed == 0
    assert result.attempted > 0


def test_public_functions_document_an_example() -> None:
    missing = []
    for name in evaluation.__all__:
        value = getattr(evaluation, name)
        if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__.startswith(
            "moa_graph.evaluation"
        ):
            doc = inspect.getdoc(value) or ""
            module_doc = inspect.getdoc(importlib.import_module(value.__module__)) or ""
            if "Example" not in doc and "Example" not in module_doc:
                missing.append(name)
    assert missing == []


def test_main_eval_documents_every_argument() -> None:
    from moa_graph.evaluation.cli import build_eval_parser, main_eval

    doc = main_eval.__doc__ or ""
    options = [a.option_strings[0] for a in build_eval_parser()._actions if a.option_strings]
    undocumented = [o for o in options if o not in doc and o not in ("-h",)]
    assert undocumented == []
