"""The mixture's command-line options, derived from the settings declaration.

Every setting of ``moa_graph.settings`` is a flag of ``ask``, ``chat`` and ``serve`` with the
setting's name in dashes (``first_k`` -> ``--first-k``), its type and its doc; ``none`` unsets an
optional one (``--timeout none``), and a boolean has a ``--no-`` form. A flag not given leaves the
recipe's value (``--preset`` or ``--config``), and the recipe leaves the setting's default.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_mixture_options(parser)
    >>> args = parser.parse_args(["--first-k", "2", "--no-early-exit", "--proposer", "openai:x"])
    >>> mixture_overrides(args)
    {'proposers': ['openai:x'], 'first_k': 2, 'early_exit': False}
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from moa_graph import strategies
from moa_graph.presets import PRESETS, Recipe, choose_recipe
from moa_graph.serve.options import ServeOptions
from moa_graph.settings import SETTINGS, SettingSpec


def add_mixture_options(parser: argparse.ArgumentParser) -> None:
    """Add the recipe, model and setting options to ``parser``."""
    recipe = parser.add_argument_group("mixture")
    recipe.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named recipe (default: local without a key; only its shape when --proposer and "
        "--aggregator replace its models)",
    )
    recipe.add_argument("--config", metavar="FILE", help="a TOML recipe file")
    recipe.add_argument(
        "--proposer", action="append", metavar="MODEL", help="proposer model spec (repeatable)"
    )
    recipe.add_argument("--aggregator", metavar="MODEL", help="aggregator model spec")
    recipe.add_argument(
        "--layers", type=int, metavar="N", help="layers, aggregator included (3 = paper MoA)"
    )
    settings = parser.add_argument_group("settings (default: the recipe's, else the one shown)")
    for spec in SETTINGS.values():
        _add_setting(settings, spec)


def _add_setting(group: argparse._ArgumentGroup, spec: SettingSpec) -> None:
    helptext = f"{spec.doc} (default: {spec.display(spec.default)})"
    if spec.name == "aggregation":
        helptext += "; " + "; ".join(f"{s.name}: {s.summary}" for s in strategies.all_strategies())
    helptext = helptext.replace("%", "%%")  # argparse formats help strings
    if spec.base_type is bool:
        group.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=helptext)  # fmt: skip
        return
    # Not given: no attribute at all (SUPPRESS), so that ``--timeout none`` can mean None.
    group.add_argument(spec.flag, dest=spec.name, type=_converter(spec),
                       default=argparse.SUPPRESS, choices=spec.choices, metavar=_metavar(spec),
                       help=helptext)  # fmt: skip


def _converter(spec: SettingSpec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:  # argparse reports this message as the flag's error
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = spec.name
    return convert


def _metavar(spec: SettingSpec) -> str | None:
    if spec.choices is not None:
        return None  # argparse shows the choices
    if spec.name == "rate_limits":
        return "PROVIDER=RPS,..."
    return {int: "N", float: "NUMBER"}.get(spec.base_type, "TEXT")


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the server's options (``moa_graph.serve.options.ServeOptions``) as flags."""
    group = parser.add_argument_group("server")
    types = {"int": int, "float": float}  # the fields' annotations, as strings
    for option in fields(ServeOptions):
        flag, doc = "--" + option.name.replace("_", "-"), option.metadata["doc"]
        if str(option.type) == "bool":
            group.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction,
                               default=option.default, help=doc)  # fmt: skip
            continue
        group.add_argument(
            flag,
            dest=option.name,
            type=types.get(str(option.type), str),
            default=option.default,
            metavar=option.name.upper(),
            help=f"{doc} (default: {option.metadata['shown']})",
        )


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The server options given (each a ``ServeOptions`` field); a bad one is a ``ValueError``."""
    options = {option.name: getattr(args, option.name) for option in fields(ServeOptions)}
    ServeOptions(**options)  # checked now, before a mixture is built
    return options


def mixture_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the options set on top of the recipe: models, layers and every setting given."""
    overrides: dict[str, Any] = {}
    if args.proposer:
        overrides["proposers"] = list(args.proposer)
    for name in ("aggregator", "layers"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides.update({name: value for name, value in vars(args).items() if name in SETTINGS})
    return overrides


def base_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe the options start from: ``--config``, ``--preset`` or the default preset (its
    shape only when ``--proposer`` and ``--aggregator`` replace every model)."""
    own_models = bool(args.proposer) and args.aggregator is not None
    return choose_recipe(preset=args.preset, config=args.config, own_models=own_models)


def mixture_source(args: argparse.Namespace) -> dict[str, Any]:
    """The options' mixture as JSON: ``preset``, ``config`` and the ``overrides`` (what
    ``moa-graph serve --workers N`` hands each worker to build it again)."""
    return {"preset": args.preset, "config": args.config, "overrides": mixture_overrides(args)}


def settings_table() -> str:
    """Every setting as a Markdown table (``moa-graph settings``; the README's reference).

    Example:
        >>> settings_table().splitlines()[2].startswith("| `prompt` | `--prompt` |")
        True
    """
    rows = ["| setting | flag | default | what it does |", "|---|---|---|---|"]
    for spec in SETTINGS.values():
        doc = spec.doc + (" (per run too)" if spec.per_run else "")
        default = spec.display(spec.default)
        rows.append(f"| `{spec.name}` | `{spec.flag}` | `{default}` | {_cell(doc)} |")
    return "\n".join(rows)


def strategies_table() -> str:
    """The aggregation strategies as a Markdown table (from the registry).

    Example:
        >>> strategies_table().splitlines()[2].startswith("| `synthesize` |")
        True
    """
    rows = ["| `aggregation` | what it does |", "|---|---|"]
    rows += [f"| `{s.name}` | {_cell(s.summary)} |" for s in strategies.all_strategies()]
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def serve_options_table() -> str:
    """The server's options as a Markdown table (``moa-graph serve`` flags).

    Example:
        >>> serve_options_table().splitlines()[2]
        '| `--host` | `127.0.0.1` | interface to bind (set MOA_GRAPH_API_KEY before exposing it) |'
    """
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for option in fields(ServeOptions):
        flag = "--" + option.name.replace("_", "-")
        doc, shown = option.metadata["doc"], option.metadata["shown"]
        rows.append(f"| `{flag}` | `{shown}` | {_cell(doc)} |")
    return "\n".join(rows)
