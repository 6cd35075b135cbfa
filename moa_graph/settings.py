"""Every mixture setting, declared once: ``MixtureSettings``.

Each field of ``MixtureSettings`` is one setting, with its type, default, bounds and a one-line
description. Every surface derives from this class, so a new setting is one field here:

- ``create_moa_graph(proposers, aggregator=..., **settings)`` takes them as keywords;
- ``ChatMixtureOfAgents`` inherits them as fields (and ``presets`` recipes pass them on);
- TOML recipes (``presets.load_recipe``) take them as keys;
- ``moa-graph ask`` / ``chat`` / ``serve`` take them as flags (``first_k`` -> ``--first-k``);
- ``moa-graph eval`` system specs take them as options (``self-moa:MODEL,n=3,first_k=2``);
- the settings marked *per run* may also be chosen for one run (``context`` of a graph,
  ``configurable["moa"]`` of the chat model), next to the choices of ``RUN_CHOICES``.

An unknown name is refused everywhere, naming the closest valid one.

Example:
    >>> settings_from({"first_k": 2}).first_k
    2
    >>> settings_from({"first_kk": 2})
    Traceback (most recent call last):
    ...
    ValueError: first_kk: not a setting; did you mean 'first_k'?
    >>> settings_from({"min_proposals": 0})
    Traceback (most recent call last):
    ...
    ValueError: min_proposals: must be an integer >= 1 (got 0)
"""

from __future__ import annotations

import difflib
import importlib
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from moa_graph import strategies
from moa_graph.answers import EXTRACTORS, Extractor, extractor_name
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT
from moa_graph.strategies import Strategy
from moa_graph.tokens import TokenCounter, approximate_tokens

TOKEN_COUNTERS: dict[str, TokenCounter] = {"approximate": approximate_tokens}
"""Token counters by name (``token_counter = "approximate"`` in a recipe or on the command line)."""


def _import_object(path: str, setting: str) -> Any:
    """``"package.module:attribute"`` imported (recipes and flags name functions this way)."""
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"{setting}: cannot import {path!r}: {exc}") from None


def _known_strategy(name: str | Strategy) -> str | Strategy:
    """A strategy's name, or a ``Strategy`` instance (kept as it is)."""
    if isinstance(name, Strategy):
        if not isinstance(getattr(name, "name", None), str):
            raise ValueError(f"aggregation: {type(name).__name__} needs a name (a str)")
        return name
    try:
        strategies.get(name)  # built-in names first: entry points are read only for others
        return name
    except KeyError:
        known = strategies.names()
    if name not in known:
        raise PydanticCustomError(
            "literal_error",
            "Input should be {expected}",
            {"expected": " or ".join([", ".join(map(repr, known[:-1])), repr(known[-1])]),
             "choices": ", ".join(known)},
        )  # fmt: skip
    return name


def _function(setting: str, names: Mapping[str, Any], *, resolve: bool) -> BeforeValidator:
    """A function setting's validator: a function, a name of ``names`` (kept as the name unless
    ``resolve``) or ``"module:function"``."""

    def validate(value: Any) -> Any:
        if value is None or callable(value):
            return value
        if isinstance(value, str) and value in names:
            return names[value] if resolve else value
        if isinstance(value, str) and ":" in value:
            return _import_object(value, setting)
        raise ValueError(
            f"{setting}: unknown {value!r}; give {', '.join(names)}, a function or "
            "'module:function'"
        )

    return BeforeValidator(validate)


def _positive_rates(rates: dict[str, float] | None) -> dict[str, float] | None:
    for provider, rate in (rates or {}).items():
        if not rate > 0:
            raise ValueError(f"rate_limits: {provider!r} needs a positive rate (got {rate!r})")
    return rates


def setting(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    per_run: bool = False,
    identifying: bool = False,
    refines: str | None = None,
    strict: bool = True,
) -> Any:
    """Declare one setting: its default, a one-line doc and bounds.

    ``per_run``: a run may choose it too (``context`` / ``configurable["moa"]``).
    ``identifying``: always part of a mixture's identity (``_identifying_params``, and so of
    the evaluation cache's keys); other settings join it only when not at their default, or,
    when they ``refine`` another setting, whenever that one is set.
    ``strict``: no conversion (``"7"`` is not an integer); off for ``Literal`` types (checked
    exactly anyway) and functions.
    """
    extra: dict[str, Any] = {"per_run": per_run, "identifying": identifying, "refines": refines}
    return Field(default, description=doc, ge=ge, gt=gt, le=le, strict=strict or None,
                 json_schema_extra=extra)  # fmt: skip


class MixtureSettings(BaseModel):
    """Every setting of a mixture (see the module docstring for where each one reaches).

    Example:
        >>> MixtureSettings().temperature, MixtureSettings(aggregation="vote").aggregation
        (0.7, 'vote')
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompt: str = setting(
        AGGREGATE_AND_SYNTHESIZE_PROMPT,
        "the Aggregate-and-Synthesize prompt (the paper's Table 1 text)",
    )
    temperature: float | None = setting(
        0.7, "temperature of models built from strings (a run's choice: every proposer call)",
        ge=0, le=2, per_run=True, identifying=True,
    )  # fmt: skip
    max_tokens: int | None = setting(
        512, "answer length limit of models built from strings", ge=1, identifying=True
    )
    timeout: float | None = setting(
        120.0, "seconds one call may take before it is cancelled (none: no limit)", gt=0
    )
    max_retries: int = setting(
        2, "retries of transient errors (429, 5xx, connection), honouring Retry-After", ge=0
    )
    rate_limits: Annotated[dict[str, float] | None, AfterValidator(_positive_rates)] = setting(
        None, "requests per second per provider of models built from strings (together=5)"
    )
    min_proposals: int = setting(
        1, "proposers of each layer that must answer for the run to go on", ge=1,
        identifying=True,
    )  # fmt: skip
    fail_mode: Literal["best_effort", "fail_fast"] = setting(
        "best_effort",
        "fail_fast: the first failed proposer cancels its layer and the run",
        strict=False,
    )
    first_k: int | None = setting(
        None, "straggler cut-off: stop waiting once this many proposers of a layer answered",
        ge=1, identifying=True,
    )  # fmt: skip
    layer_timeout: float | None = setting(
        None, "seconds a proposer layer may take; unfinished proposers are cancelled", gt=0
    )
    fallback_to_aggregator: bool = setting(
        False, "below min_proposals, let the aggregator answer with what there is"
    )
    max_reference_tokens: int | None = setting(
        None, "token budget of the references of one call (each cut to an equal share)", ge=1
    )
    token_counter: Annotated[
        TokenCounter, _function("token_counter", TOKEN_COUNTERS, resolve=True)
    ] = setting(
        approximate_tokens,
        "counts tokens for max_reference_tokens: approximate (4 characters a token), a "
        "function or 'module:function'",
        strict=False,
    )
    max_concurrent_calls: int | None = setting(
        None, "cap on this mixture's model calls in flight at once", ge=1
    )
    max_input_chars: int = setting(400_000, "longest conversation accepted, in characters", ge=1)
    aggregation: Annotated[str | Strategy, AfterValidator(_known_strategy)] = setting(
        "synthesize", "how the final answer is made (a strategy name, or a Strategy)",
        per_run=True, identifying=True, strict=False,
    )  # fmt: skip
    answer_extractor: Annotated[
        str | Extractor | None, _function("answer_extractor", EXTRACTORS, resolve=False)
    ] = setting(
        None,
        "reads final answers for voting and early exit: number, choice, a function or "
        "'module:function' (default: number where needed)",
        identifying=True,
        strict=False,
    )
    shuffle_references: bool = setting(
        False, "show each aggregating call the references in a recorded random order",
        identifying=True,
    )  # fmt: skip
    seed: int | None = setting(
        None, "makes runs reproducible: sample k is drawn with seed + k, shuffles derive from it",
        ge=0, le=2**31 - 1, per_run=True,
        identifying=True,
    )  # fmt: skip
    confidence_temperature: float = setting(
        0.25, "weighted_vote: how much more a confident answer's vote counts (a softmax "
        "temperature over mean token log-probabilities; lower trusts confidence more)",
        gt=0, le=10, per_run=True,
    )  # fmt: skip
    aggregation_window: int | None = setting(
        None, "Self-MoA-Seq: synthesize at most this many references per call", ge=2,
        identifying=True,
    )  # fmt: skip
    early_exit: bool = setting(
        False, "skip the remaining layers when every proposer of a layer gives one final answer",
        identifying=True,
    )  # fmt: skip
    staircase: int | None = setting(
        None, "staircase streaming, tokens per chunk: each layer and the aggregator start on "
        "the first chunk of every reference (none: off)", ge=1, per_run=True,
    )  # fmt: skip
    staircase_growth: float = setting(
        2.0, "each staircase chunk is this many times the one before (1: all alike)",
        ge=1, le=8, refines="staircase",
    )  # fmt: skip

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt: the aggregation prompt must be a non-empty string")
        return prompt

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            known = set(cls.model_fields) | {
                field.alias for field in cls.model_fields.values() if field.alias
            }
            check_known(values, known, what="setting")
        return values

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults.

        Example:
            >>> MixtureSettings(first_k=2, seed=None).changed()
            {'first_k': 2}
        """
        return {
            name: getattr(self, name)
            for name, spec in SETTINGS.items()
            if getattr(self, name) != spec.default
        }


class MixtureSettingsDict(TypedDict, total=False):
    """Every setting as a keyword a type checker sees (``create_moa_graph(...,
    **settings: Unpack[MixtureSettingsDict])``): mypy and pyright refuse a misspelt name or a
    value of the wrong type before anything runs. Kept equal to ``MixtureSettings`` (its names
    and types) by a test.

    Example:
        >>> settings: MixtureSettingsDict = {"first_k": 2, "aggregation": "vote"}
        >>> settings_from(settings).first_k
        2
    """

    prompt: str
    temperature: float | None
    max_tokens: int | None
    timeout: float | None
    max_retries: int
    rate_limits: dict[str, float] | None
    min_proposals: int
    fail_mode: Literal["best_effort", "fail_fast"]
    first_k: int | None
    layer_timeout: float | None
    fallback_to_aggregator: bool
    max_reference_tokens: int | None
    token_counter: TokenCounter
    max_concurrent_calls: int | None
    max_input_chars: int
    aggregation: str | Strategy
    answer_extractor: str | Extractor | None
    shuffle_references: bool
    seed: int | None
    confidence_temperature: float
    aggregation_window: int | None
    early_exit: bool
    staircase: int | None
    staircase_growth: float


# -- what every surface reads off the declaration ------------------------------------------------


@dataclass(frozen=True)
class SettingSpec:
    """One setting as the surfaces see it: name, type, default, bounds, doc, where it reaches."""

    name: str
    annotation: Any
    default: Any
    doc: str
    per_run: bool
    identifying: bool
    refines: str | None
    bounds: tuple[tuple[str, float], ...]

    @property
    def flag(self) -> str:
        """The command-line flag: ``--first-k``."""
        return "--" + self.name.replace("_", "-")

    @property
    def base_type(self) -> Any:
        """The type without ``None`` and validators (``int | None`` -> ``int``)."""
        return _base(self.annotation)

    @property
    def optional(self) -> bool:
        """Whether ``None`` is a valid value."""
        return _allows_none(self.annotation)

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The valid values of a setting with a fixed set of them."""
        if self.name == "aggregation":
            return strategies.names()
        if typing.get_origin(self.base_type) is Literal:
            return tuple(typing.get_args(self.base_type))
        return None

    @property
    def rule(self) -> str:
        """What a valid value is, in words: ``"an integer >= 1"``."""
        choices = self.choices
        if choices is not None:
            return "one of " + ", ".join(choices)
        base = self.base_type
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        text = words.get(base, "a " + getattr(base, "__name__", str(base)))
        bounds = {kind: _number(value) for kind, value in self.bounds}
        if "ge" in bounds and "le" in bounds:
            return f"{text} from {bounds['ge']} to {bounds['le']}"
        symbols = {"ge": ">=", "gt": ">", "le": "<="}
        return " ".join([text, *(f"{symbols[k]} {v}" for k, v in bounds.items())])

    def display(self, value: Any) -> str:
        """A value as recipes and flags write it (a function by its name)."""
        if value is None:
            return "none"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, Strategy):
            return value.name
        if self.name == "token_counter":
            return next((k for k, f in TOKEN_COUNTERS.items() if f is value), _qualname(value))
        if self.name == "answer_extractor":
            return str(extractor_name(value))
        if isinstance(value, dict):
            return ",".join(f"{key}={rate:g}" for key, rate in value.items())
        if isinstance(value, str) and len(value) > 40:
            return value[:37] + "..."
        return str(value)

    def identity(self, value: Any) -> Any:
        """A value as a mixture's identity records it: functions by name, the rest as is."""
        if isinstance(value, Strategy) or (callable(value) and not isinstance(value, type)):
            return self.display(value)
        return value

    def parse(self, text: str, key: str | None = None) -> Any:
        """A value written as text (a flag or an eval option) in this setting's type; an error
        names ``key`` (the name as written, default the setting's).

        Example:
            >>> SETTINGS["first_k"].parse("none"), SETTINGS["early_exit"].parse("yes")
            (None, True)
            >>> SETTINGS["rate_limits"].parse("together=5,openai=2.5")
            {'together': 5.0, 'openai': 2.5}
        """
        if self.optional and text.strip().lower() in ("none", "null"):
            return None
        base = self.base_type
        try:
            if base is bool:
                return _boolean(text)
            if base is int:
                return int(text)
            if base is float:
                return float(text)
            if typing.get_origin(base) is dict:
                return _rates(text)
        except ValueError:
            raise ValueError(f"{key or self.name}: expected {self.rule}, got {text!r}") from None
        return text


def _number(value: float) -> str:
    """A bound as written: ``2``, ``0.5``, ``2147483647`` (never ``2.14748e+09``)."""
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _qualname(value: Any) -> str:
    return getattr(value, "__qualname__", type(value).__name__)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _rates(text: str) -> dict[str, float]:
    rates = {}
    for pair in text.split(","):
        provider, sep, rate = pair.partition("=")
        if not sep or not provider.strip():
            raise ValueError(pair)
        rates[provider.strip()] = float(rate)
    return rates


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_args(annotation: Any) -> tuple[Any, ...]:
    annotation = _strip_annotated(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(_strip_annotated(arg) for arg in typing.get_args(annotation))
    return (annotation,)


def _allows_none(annotation: Any) -> bool:
    return type(None) in _union_args(annotation)


def _base(annotation: Any) -> Any:
    args = [arg for arg in _union_args(annotation) if arg is not type(None)]
    return args[0] if len(args) == 1 else str


def _spec(name: str) -> SettingSpec:
    field = MixtureSettings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    bounds: list[tuple[str, float]] = []
    for item in field.metadata:
        for kind, cls in (("ge", Ge), ("gt", Gt), ("le", Le)):
            if isinstance(item, cls):
                bounds.append((kind, float(getattr(item, kind))))
    return SettingSpec(
        name=name,
        annotation=field.annotation,
        default=field.default,
        doc=field.description or "",
        per_run=bool(extra.get("per_run")),
        identifying=bool(extra.get("identifying")),
        refines=str(extra["refines"]) if extra.get("refines") else None,
        bounds=tuple(bounds),
    )


SETTINGS: dict[str, SettingSpec] = {name: _spec(name) for name in MixtureSettings.model_fields}
"""Every setting by name, in declaration order."""


class RunChoice(typing.NamedTuple):
    """A per-run choice that is not a setting: it narrows the mixture's shape."""

    annotation: Any
    doc: str


RUN_CHOICES: dict[str, RunChoice] = {
    "layers": RunChoice(int, "2 up to the configured layers (the first proposer layers are kept)"),
    "proposers": RunChoice(
        list[str], "names of configured proposers to ask (references keep the configured order)"
    ),
    "aggregator": RunChoice(
        str, "name of a configured proposer or of the aggregator, to write the final answer"
    ),
    "aggregator_temperature": RunChoice(float, "temperature of the final aggregator call"),
}
"""Per-run choices beside the per-run settings (see ``per_run_keys``)."""


def per_run_keys() -> tuple[str, ...]:
    """Every key a run may choose: the shape choices, then the per-run settings.

    Example:
        >>> per_run_keys()
        ('layers', 'proposers', 'aggregator', 'aggregator_temperature', 'temperature', \
'aggregation', 'seed', 'confidence_temperature', 'staircase')
    """
    return (*RUN_CHOICES, *(name for name, spec in SETTINGS.items() if spec.per_run))


def settings_help(indent: str = "") -> str:
    """Every setting with its default and one-line doc, as docstrings and help list them."""
    return "\n".join(
        f"{indent}{name} (default {spec.display(spec.default)}): {spec.doc}"
        for name, spec in SETTINGS.items()
    )


# -- checking ------------------------------------------------------------------------------------


def check_known(keys: Iterable[str], known: Collection[str], *, what: str, where: str = "") -> None:
    """Refuse a key outside ``known``, naming the closest valid one (``ValueError``).

    Example:
        >>> check_known(["temprature"], ["temperature", "seed"], what="setting")
        Traceback (most recent call last):
        ...
        ValueError: temprature: not a setting; did you mean 'temperature'?
    """
    for key in keys:
        if key not in known:
            raise ValueError(f"{where}{key}: not a {what}; {suggestion(str(key), known)}")


def suggestion(word: str, known: Collection[str]) -> str:
    """``did you mean 'x'?`` for the closest of ``known``, else the list of them."""
    close = difflib.get_close_matches(word, [str(k) for k in known], n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid: " + ", ".join(sorted(str(k) for k in known))


def settings_from(values: Mapping[str, Any], *, where: str = "") -> MixtureSettings:
    """Settings validated, every problem a ``ValueError`` naming the setting (and ``where``).

    Example:
        >>> settings_from({"aggregation": "vot"})
        Traceback (most recent call last):
        ...
        ValueError: aggregation: must be one of synthesize, vote, weighted_vote, rank, \
synthesize_with_votes \
(got 'vot')
    """
    check_known(values, SETTINGS, what="setting", where=where)
    try:
        return MixtureSettings.model_validate(values)
    except ValidationError as exc:
        raise ValueError(where + described(exc)) from None


def check_value(name: str, value: Any) -> Any:
    """One setting's value validated on its own (a per-run choice); returns it.

    Example:
        >>> check_value("temperature", 2.5)
        Traceback (most recent call last):
        ...
        ValueError: temperature: must be a number from 0 to 2 (got 2.5)
    """
    try:
        return _adapter(name).validate_python(value)
    except ValidationError as exc:
        raise ValueError(described(exc, name)) from None


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    field = MixtureSettings.model_fields[name]
    annotated: Any = Annotated[field.annotation, *field.metadata]  # validators and bounds
    return TypeAdapter(annotated, config=ConfigDict(arbitrary_types_allowed=True))


def described(exc: ValidationError, name: str | None = None) -> str:
    """The first problem of a validation error as ``"<setting>: must be ... (got ...)"``."""
    error = exc.errors()[0]
    setting = name or (str(error["loc"][0]) if error["loc"] else "")
    context = error.get("ctx") or {}
    if error["type"] == "value_error":
        return str(context.get("error", error["msg"]))
    spec = SETTINGS.get(setting)
    if "choices" in context:
        rule = "one of " + str(context["choices"])
    elif spec is not None:
        rule = spec.rule
    else:
        return f"{setting}: {error['msg']}"
    return f"{setting}: must be {rule} (got {error['input']!r})"


DEFAULTS = MixtureSettings()
"""Every setting at its default (``DEFAULTS.temperature`` is 0.7)."""
