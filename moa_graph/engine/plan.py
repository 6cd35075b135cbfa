"""Validate a mixture's configuration once and turn it into a plan of ready-to-call models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import RunnableConfig

from moa_graph.aggregation import AGGREGATIONS, Aggregation
from moa_graph.answers import Extractor, get_extractor
from moa_graph.engine.calls import CallPolicy
from moa_graph.engine.race import RaceRules
from moa_graph.engine.references import TokenCounter, approximate_tokens
from moa_graph.models import (
    ChatRunnable,
    ModelDefaults,
    ModelLike,
    ResolvedModel,
    resolve_model,
)
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT
from moa_graph.validation import DEFAULT_MAX_INPUT_CHARS

FailMode = Literal["best_effort", "fail_fast"]


@dataclass(frozen=True)
class ProposerSlot:
    """One proposer call of a layer: a model (one sample of it) at a configured position."""

    layer: int
    index: int
    name: str
    """Display name; a sampled model's slots are ``"<spec name> #<n>"``."""
    spec_name: str
    """Name of the configured model this slot samples (``name`` without ``" #<n>"``)."""
    model_name: str
    model: ChatRunnable
    system_prompt: str | None
    policy: CallPolicy
    sample: int = 0
    """Which sample of its configured model this slot is (0 for a model sampled once)."""


@dataclass(frozen=True)
class RunOptions:
    """How a run copes with slow, failing or verbose proposers (see ``create_moa_graph``)."""

    min_proposals: int = 1
    fail_mode: FailMode = "best_effort"
    first_k: int | None = None
    layer_timeout: float | None = None
    fallback_to_aggregator: bool = False
    max_reference_tokens: int | None = None
    token_counter: TokenCounter = approximate_tokens
    max_concurrent_calls: int | None = None
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    aggregation: Aggregation = "synthesize"
    answer_extractor: str | Extractor | None = None
    shuffle_references: bool = False
    seed: int | None = None
    aggregation_window: int | None = None
    early_exit: bool = False

    @property
    def extractor(self) -> Extractor | None:
        """The answer extractor to use: the configured one, or ``number`` when a strategy
        needs one and none was given."""
        if self.answer_extractor is None:
            needs_one = self.early_exit or self.aggregation in ("vote", "synthesize_with_votes")
            return get_extractor("number") if needs_one else None
        return get_extractor(self.answer_extractor)

    @property
    def race_rules(self) -> RaceRules:
        return RaceRules(
            first_k=self.first_k,
            deadline=self.layer_timeout,
            fail_fast=self.fail_mode == "fail_fast",
        )


@dataclass(frozen=True)
class MixturePlan:
    """The validated shape of a mixture: proposer layers, the aggregator and the run options.

    ``layers`` counts as in the paper: ``len(proposer_layers) + 1`` (the aggregator's layer).
    """

    proposer_layers: tuple[tuple[ProposerSlot, ...], ...]
    aggregator: ResolvedModel
    prompt: str
    options: RunOptions
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """API keys given in specs, masked wherever an error message is recorded."""
    models: tuple[ResolvedModel, ...] = field(default=(), repr=False)
    """Every configured model (proposers and aggregator), each once, in configured order."""

    @property
    def layers(self) -> int:
        return len(self.proposer_layers) + 1

    @property
    def max_width(self) -> int:
        return max(len(layer) for layer in self.proposer_layers)

    def run_config(self) -> RunnableConfig:
        """Graph config that lets every proposer of the widest layer run at once.

        LangGraph's synchronous runner uses a thread pool of ``max_concurrency`` workers (by
        default ``cpu_count + 4``), one of which waits on the output stream while streaming.
        """
        return RunnableConfig(
            max_concurrency=self.max_width + 2, recursion_limit=2 * self.layers + 10
        )


def build_plan(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    defaults: ModelDefaults | None = None,
    options: RunOptions | None = None,
) -> MixturePlan:
    """Check every option and resolve every model; invalid input raises ``ValueError``.

    A flat list of proposers is reused in each of the ``layers - 1`` proposer layers; a list of
    lists gives each layer its own proposers and must have ``layers - 1`` entries.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> fake = GenericFakeChatModel(messages=iter([]))
        >>> plan = build_plan([fake, fake], aggregator=fake, layers=3)
        >>> plan.layers, [len(layer) for layer in plan.proposer_layers]
        (3, [2, 2])
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: the aggregation prompt must be a non-empty string")
    if aggregator is None:
        raise ValueError("aggregator: a model is required")
    defaults = defaults or ModelDefaults()
    options = options or RunOptions()
    specs_per_layer = _layer_specs(proposers, layers)
    resolved_models: dict[int, ResolvedModel] = {}
    resolve = _resolver(defaults, resolved_models)
    proposer_layers = []
    for layer_number, specs in enumerate(specs_per_layer, start=1):
        slots: list[ProposerSlot] = []
        for position, spec in enumerate(specs):
            resolved = resolve(spec, _field_name(proposers, layer_number, position))
            slots.extend(_slots_for(resolved, layer_number, first_index=len(slots)))
        proposer_layers.append(tuple(slots))
    plan = MixturePlan(
        proposer_layers=tuple(proposer_layers),
        aggregator=resolve(aggregator, "aggregator"),
        prompt=prompt,
        options=options,
        secrets=tuple(sorted({m.secret for m in resolved_models.values() if m.secret})),
        models=tuple(resolved_models.values()),
    )
    check_options(plan.options, smallest_layer=min(len(layer) for layer in proposer_layers))
    return plan


def plan_from_settings(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    **settings: Any,
) -> MixturePlan:
    """``build_plan`` with flat keyword settings, each going to ``ModelDefaults`` or ``RunOptions``.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> fake = GenericFakeChatModel(messages=iter([]))
        >>> plan_from_settings([fake], aggregator=fake, first_k=1, timeout=5).options.first_k
        1
    """
    model_fields = {f.name for f in fields(ModelDefaults)}
    option_fields = {f.name for f in fields(RunOptions)}
    unknown = set(settings) - model_fields - option_fields
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return build_plan(
        proposers,
        aggregator=aggregator,
        layers=layers,
        prompt=prompt,
        defaults=ModelDefaults(**{k: v for k, v in settings.items() if k in model_fields}),
        options=RunOptions(**{k: v for k, v in settings.items() if k in option_fields}),
    )


def _resolver(
    defaults: ModelDefaults, cache: dict[int, ResolvedModel]
) -> Callable[[ModelLike, str], ResolvedModel]:
    """Resolve specs into ``cache``, each distinct object once (a flat list reused in layers)."""
    limiters = {
        provider: InMemoryRateLimiter(requests_per_second=rate, max_bucket_size=max(1, rate))
        for provider, rate in (defaults.rate_limits or {}).items()
    }

    def resolve(spec: ModelLike, field_name: str) -> ResolvedModel:
        if id(spec) not in cache:
            cache[id(spec)] = resolve_model(
                spec, field=field_name, defaults=defaults, rate_limiters=limiters
            )
        return cache[id(spec)]

    return resolve


def check_options(options: RunOptions, *, smallest_layer: int) -> None:
    """Raise ``ValueError`` naming the first invalid run option."""
    minimum = options.min_proposals
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"min_proposals: must be an integer >= 1 (got {minimum!r})")
    if minimum > smallest_layer:
        raise ValueError(
            f"min_proposals: {minimum} is more than the {smallest_layer} proposers of the "
            "smallest layer"
        )
    if options.fail_mode not in ("best_effort", "fail_fast"):
        raise ValueError(
            f"fail_mode: must be 'best_effort' or 'fail_fast' (got {options.fail_mode!r})"
        )
    if options.first_k is not None and not minimum <= options.first_k <= smallest_layer:
        raise ValueError(
            f"first_k: must be between min_proposals ({minimum}) and the {smallest_layer} "
            f"proposers of the smallest layer (got {options.first_k!r})"
        )
    for name in ("layer_timeout",):
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name}: must be a positive number of seconds (got {value!r})")
    for name in ("max_reference_tokens", "max_concurrent_calls", "max_input_chars"):
        value = getattr(options, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name}: must be a positive integer (got {value!r})")
    check_aggregation(options)


def check_aggregation(options: RunOptions) -> None:
    """Raise ``ValueError`` naming the first invalid aggregation option."""
    if options.aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation: must be one of {', '.join(AGGREGATIONS)} (got {options.aggregation!r})"
        )
    if options.answer_extractor is not None:
        get_extractor(options.answer_extractor)
    window = options.aggregation_window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 2):  # fmt: skip
        raise ValueError(f"aggregation_window: must be an integer >= 2 (got {window!r})")
    if window is not None and options.aggregation in ("vote", "rank"):
        raise ValueError(
            f"aggregation_window: slides over syntheses; aggregation={options.aggregation!r} "
            "picks one reference instead"
        )
    seed = options.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed: must be an integer (got {seed!r})")


def _layer_specs(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]], layers: int | None
) -> list[list[ModelLike]]:
    if isinstance(proposers, str) or not isinstance(proposers, Sequence) or not proposers:
        raise ValueError("proposers: give a non-empty list of models (or a list of lists)")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
        raise ValueError(f"layers: must be an integer, got {layers!r}")
    nested = [_is_layer_list(entry) for entry in proposers]
    if any(nested) and not all(nested):
        raise ValueError("proposers: mix of models and lists; give a flat list or a list of lists")
    if all(nested):
        per_layer: list[list[ModelLike]] = [list(entry) for entry in proposers]  # type: ignore[arg-type]
        for number, layer in enumerate(per_layer, start=1):
            if not layer:
                raise ValueError(f"proposers[{number - 1}]: layer {number} has no proposers")
        if layers is None:
            layers = len(per_layer) + 1
        if layers < 2:
            raise ValueError(f"layers: must be at least 2 (got {layers})")
        if len(per_layer) != layers - 1:
            raise ValueError(
                f"proposers: {len(per_layer)} proposer layers given but layers={layers} needs "
                f"{layers - 1} (layers counts the aggregator, as in the paper)"
            )
        return per_layer
    layers = 3 if layers is None else layers
    if layers < 2:
        raise ValueError(f"layers: must be at least 2 (got {layers}); layers=2 is MoA-Lite")
    return [list(proposers) for _ in range(layers - 1)]  # type: ignore[arg-type]


def _is_layer_list(entry: object) -> bool:
    return isinstance(entry, list | tuple)


def _slots_for(resolved: ResolvedModel, layer: int, *, first_index: int) -> list[ProposerSlot]:
    return [
        ProposerSlot(
            layer=layer,
            index=first_index + sample,
            name=resolved.name if resolved.samples == 1 else f"{resolved.name} #{sample + 1}",
            spec_name=resolved.name,
            model_name=resolved.model_name,
            model=resolved.model,
            system_prompt=resolved.system_prompt,
            policy=resolved.policy,
            sample=sample,
        )
        for sample in range(resolved.samples)
    ]


def _field_name(proposers: Sequence[object], layer: int, position: int) -> str:
    if proposers and _is_layer_list(proposers[0]):
        return f"proposers[{layer - 1}][{position}]"
    return f"proposers[{position}]"
