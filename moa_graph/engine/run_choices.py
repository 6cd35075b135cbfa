"""Per-run choices: fewer layers, a subset of the proposers, temperatures, another aggregator.

A run's context (``graph.invoke(..., context={...})``, or ``configurable={"moa": {...}}`` for
``ChatMixtureOfAgents``) may narrow the configured mixture; it can never add a model. Every
choice is checked before any model is called, and a bad one raises ``ValueError`` naming its key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from typing_extensions import TypedDict

from moa_graph.engine.plan import (
    MixturePlan,
    ProposerSlot,
    check_against_shape,
    check_plan,
)
from moa_graph.models import ResolvedModel
from moa_graph.settings import RUN_CHOICES, SETTINGS, check_value, per_run_keys

_Bindable = TypeVar("_Bindable", ProposerSlot, ResolvedModel)

RUN_KEYS: Final = per_run_keys()
"""Context keys that change the run's plan: the shape choices and the per-run settings
(``aggregator_kwargs`` and ``stream_proposers`` only reach the calls)."""

CALL_KEYS: Final = {"aggregator_kwargs": dict[str, Any], "stream_proposers": bool}
"""Context keys that reach the calls: the final aggregator call's arguments (stop words, bound
tools), and whether proposers stream their tokens (``False`` saves their per-token work)."""


def _annotation(key: str) -> Any:
    if key == "aggregation":  # a name, as configs and the wire carry it (not a Strategy)
        return str
    return (RUN_CHOICES[key] if key in RUN_CHOICES else SETTINGS[key]).annotation


RunChoices: Any = TypedDict(  # type: ignore[misc]  # built from the settings declaration
    "RunChoices", {key: _annotation(key) for key in RUN_KEYS}, total=False
)
RunChoices.__doc__ = """Per-run choices of a mixture, all optional; they narrow it but never add a
model: ``layers``, ``proposers`` (names), ``aggregator`` (a configured model's name),
``aggregator_temperature``, and the per-run settings (``temperature``, ``aggregation``)."""


AGGREGATOR_KWARGS: Final = frozenset(
    {
        "stop", "tools", "tool_choice", "parallel_tool_calls", "strict", "response_format",
        "ls_structured_output_format", "tool_config", "functions", "function_call",
    }
)  # fmt: skip
"""Call arguments the final aggregator accepts from a run: stop words, tools and output formats.

Anything else (``model``, ``base_url``, ``api_key``, headers, ...) is refused, so a client of a
served graph cannot redirect the aggregator's call.
"""


def check_aggregator_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse aggregator call arguments outside ``AGGREGATOR_KWARGS`` (``ValueError``).

    Example:
        >>> check_aggregator_kwargs({"model": "gpt-5"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: aggregator_kwargs: 'model' is not allowed; allowed: function_call, ...
    """
    for key in kwargs:
        if key not in AGGREGATOR_KWARGS:
            raise ValueError(
                f"aggregator_kwargs: {key!r} is not allowed; allowed: "
                + ", ".join(sorted(AGGREGATOR_KWARGS))
            )


SHAPING_KWARGS: Final = frozenset(
    {"tools", "tool_choice", "response_format", "ls_structured_output_format", "functions",
     "function_call"}
)  # fmt: skip
"""Aggregator call arguments that shape the answer (tools, structured output): a reference
returned verbatim cannot honour them, so the aggregator must write the answer."""


def answer_must_be_written(context: Any) -> bool:
    """Whether the run binds tools or an output format to the final aggregator call.

    Example:
        >>> answer_must_be_written({"aggregator_kwargs": {"stop": ["###"]}})
        False
        >>> answer_must_be_written({"aggregator_kwargs": {"tools": [{"name": "search"}]}})
        True
    """
    kwargs = context_values(context).get("aggregator_kwargs") or {}
    return any(kwargs.get(key) is not None for key in SHAPING_KWARGS)


def context_values(context: Any) -> dict[str, Any]:
    """The MoA keys of a run's context: a mapping, or an object with those attributes.

    Other keys are ignored, so a parent graph may share its own context with the mixture.

    Example:
        >>> context_values({"layers": 2, "user_id": "u1"})
        {'layers': 2}
    """
    keys = (*RUN_KEYS, *CALL_KEYS)
    if context is None:
        return {}
    if isinstance(context, Mapping):
        return {key: context[key] for key in keys if context.get(key) is not None}
    return {key: value for key in keys if (value := getattr(context, key, None)) is not None}


def run_key(context: Any) -> tuple[Any, ...] | None:
    """A hashable key of the plan-changing choices; ``None`` when there are none."""
    values = context_values(context)
    if not any(key in values for key in RUN_KEYS):
        return None
    proposers = values.get("proposers")
    if isinstance(proposers, list | tuple):
        proposers = tuple(proposers)
    key = tuple((name, proposers if name == "proposers" else values.get(name)) for name in RUN_KEYS)
    try:
        hash(key)
    except TypeError:  # an invalid value: ``run_plan`` will say which
        return (repr(key),)
    return key


def run_plan(plan: MixturePlan, context: Any) -> MixturePlan:
    """``plan`` narrowed by a run's context; the plan itself when the context chooses nothing.

    Keys: ``layers`` (2 up to the configured layers; the first proposer layers are kept),
    ``aggregation`` (a strategy name, or a ``Strategy``),
    ``proposers`` (names of configured proposers, in any order; references keep the configured
    order; a model sampled n times is chosen by its name, one sample by ``"name #k"``),
    ``temperature`` (every proposer call), ``aggregator_temperature`` and ``aggregator`` (the
    name of a configured proposer or of the aggregator).

    Raises:
        ValueError: naming the key, for an unknown name, an empty subset, a subset too small for
            ``min_proposals`` / ``first_k``, or a value out of range.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from moa_graph.models import ProposerSpec
        >>> def spec(name):
        ...     return ProposerSpec(model=GenericFakeChatModel(messages=iter([])), name=name)
        >>> from moa_graph.engine.plan import build_plan
        >>> plan = build_plan([spec("a"), spec("b"), spec("c")], aggregator=spec("d"), layers=3)
        >>> narrowed = run_plan(plan, {"layers": 2, "proposers": ["c", "a"], "aggregator": "b"})
        >>> [[s.name for s in layer] for layer in narrowed.proposer_layers]
        [['a', 'c']]
        >>> narrowed.aggregator.name
        'b'
    """
    values = context_values(context)
    if not any(key in values for key in RUN_KEYS):
        return plan
    layers = _layers(values.get("layers", plan.layers), plan.layers)
    chosen = values.get("proposers")
    proposer_layers = plan.proposer_layers[: layers - 1]
    if chosen is not None:
        proposer_layers = _subset(proposer_layers, _names(chosen, plan))
        try:
            check_against_shape(plan.options, smallest_layer=min(map(len, proposer_layers)))
        except ValueError as error:
            raise ValueError(f"proposers: too few chosen for this mixture; {error}") from None
    temperature = _temperature(values, "temperature")
    if temperature is not None:  # per run, the temperature of every proposer call
        proposer_layers = tuple(
            tuple(_bound(slot, temperature) for slot in layer) for layer in proposer_layers
        )
    aggregator = plan.aggregator
    if "aggregator" in values:
        aggregator = _model_named(values["aggregator"], plan)
    aggregator_temperature = _temperature(values, "aggregator_temperature")
    if aggregator_temperature is not None:
        aggregator = _bound(aggregator, aggregator_temperature)
    options = plan.options
    chosen_settings = {
        name: check_value(name, values[name])
        for name in RUN_KEYS
        if name in values and name in SETTINGS and name != "temperature"
    }
    if chosen_settings:
        options = options.model_copy(update=chosen_settings)
    narrowed = dataclasses.replace(
        plan, proposer_layers=proposer_layers, aggregator=aggregator, options=options
    )
    check_plan(narrowed)
    return narrowed


def _layers(value: Any, configured: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= configured:
        raise ValueError(
            f"layers: must be an integer from 2 to the configured {configured} (got {value!r})"
        )
    return value


def _names(value: Any, plan: MixturePlan) -> set[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(f"proposers: give a non-empty list of proposer names (got {value!r})")
    slots = [slot for layer in plan.proposer_layers for slot in layer]
    known = {slot.name for slot in slots} | {slot.spec_name for slot in slots}
    unknown = [name for name in value if name not in known]
    if unknown:
        raise ValueError(
            f"proposers: unknown proposer(s) {unknown!r}; configured: {sorted(known)!r}"
        )
    return set(value)


def _subset(
    layers: tuple[tuple[ProposerSlot, ...], ...], names: set[str]
) -> tuple[tuple[ProposerSlot, ...], ...]:
    chosen = tuple(
        tuple(slot for slot in layer if slot.name in names or slot.spec_name in names)
        for layer in layers
    )
    for number, layer in enumerate(chosen, start=1):
        if not layer:
            raise ValueError(f"proposers: none of {sorted(names)!r} is in layer {number}")
    return chosen


def _temperature(values: Mapping[str, Any], key: str) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    try:
        return float(check_value("temperature", value))
    except ValueError as error:  # named as the run chose it
        raise ValueError(str(error).replace("temperature:", f"{key}:", 1)) from None


def _model_named(name: Any, plan: MixturePlan) -> ResolvedModel:
    matches = [model for model in plan.models if model.name == name]
    if not matches:
        known = sorted({model.name for model in plan.models})
        raise ValueError(f"aggregator: {name!r} is not a configured model; choose one of {known!r}")
    if len(matches) > 1:
        raise ValueError(
            f"aggregator: {name!r} names {len(matches)} configured models; give them distinct "
            "names with ProposerSpec(name=...)"
        )
    return matches[0]


def _bound(item: _Bindable, temperature: float) -> _Bindable:
    return dataclasses.replace(item, model=item.model.bind(temperature=temperature))
