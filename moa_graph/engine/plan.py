"""Validate a mixture's configuration once and turn it into a plan of ready-to-call models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import RunnableConfig

from moa_graph import strategies
from moa_graph.answers import Extractor, get_extractor
from moa_graph.engine.calls import CallPolicy
from moa_graph.engine.race import RaceRules
from moa_graph.models import (
    ChatRunnable,
    Continuation,
    ModelLike,
    ResolvedModel,
    chat_model_under,
    resolve_model,
)
from moa_graph.redact import held_secrets
from moa_graph.settings import DEFAULTS, MixtureSettings
from moa_graph.strategies import Strategy


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
    continuation: Continuation | None = None
    """How the model continues a partial answer (staircase streaming)."""
    max_tokens: int | None = None
    """The model's answer budget, where known."""
    takes_turns: bool = False
    """Its generations take turns on shared cores (a staircase writes it a chunk a call)."""
    samples_in_one_request: bool = False
    """Its model's samples in this layer are drawn in one request."""
    samples_per_request: int | None = None
    """At most this many of them in one request (``None``: all); more make several requests."""

    @property
    def first_sample_index(self) -> int:
        """The index of sample 0 of this slot's model in its layer."""
        return self.index - self.sample


@dataclass(frozen=True)
class MixturePlan:
    """The validated shape of a mixture: proposer layers, the aggregator and the run options.

    ``layers`` counts as in the paper: ``len(proposer_layers) + 1`` (the aggregator's layer).
    """

    proposer_layers: tuple[tuple[ProposerSlot, ...], ...]
    aggregator: ResolvedModel
    options: MixtureSettings
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """API keys given in specs, masked wherever an error message is recorded."""
    models: tuple[ResolvedModel, ...] = field(default=(), repr=False)
    """Every configured model (proposers and aggregator), each once, in configured order."""

    @property
    def layers(self) -> int:
        return len(self.proposer_layers) + 1

    @property
    def prompt(self) -> str:
        """The Aggregate-and-Synthesize prompt."""
        return self.options.prompt

    @property
    def strategy(self) -> Strategy:
        """The aggregation strategy that makes the final answer."""
        return strategies.get(self.options.aggregation)

    @property
    def extractor(self) -> Extractor | None:
        """The answer extractor to use: the configured one, or ``number`` when the strategy or
        early exit needs one and none was given."""
        if self.options.answer_extractor is None:
            needs_one = self.options.early_exit or self.strategy.needs_extractor
            return get_extractor("number") if needs_one else None
        return get_extractor(self.options.answer_extractor)

    @property
    def race_rules(self) -> RaceRules:
        """When a layer stops waiting for its remaining proposers."""
        return RaceRules(
            first_k=self.options.first_k,
            deadline=self.options.layer_timeout,
            fail_fast=self.options.fail_mode == "fail_fast",
        )

    def run_config(self) -> RunnableConfig:
        """Graph config that lets every proposer of the widest layer run at once.

        LangGraph's synchronous runner uses a thread pool of ``max_concurrency`` workers (by
        default ``cpu_count + 4``), one of which waits on the output stream while streaming.
        """
        # a staircase runs every proposer at once, each a task of the aggregate step
        sizes = list(map(len, self.proposer_layers))
        width = sum(sizes) if self.options.staircase else max(sizes)
        return RunnableConfig(max_concurrency=width + 2, recursion_limit=2 * self.layers + 10)


def build_plan(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    settings: MixtureSettings = DEFAULTS,
) -> MixturePlan:
    """Resolve every model and check the settings against the mixture's shape.

    A flat list of proposers is reused in each of the ``layers - 1`` proposer layers; a list of
    lists gives each layer its own proposers and must have ``layers - 1`` entries. Invalid input
    raises ``ValueError`` naming the field.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> fake = GenericFakeChatModel(messages=iter([]))
        >>> plan = build_plan([fake, fake], aggregator=fake, layers=3)
        >>> plan.layers, [len(layer) for layer in plan.proposer_layers]
        (3, [2, 2])
    """
    if aggregator is None:
        raise ValueError("aggregator: a model is required")
    specs_per_layer = _layer_specs(proposers, layers)
    limiters = {
        provider: InMemoryRateLimiter(requests_per_second=rate, max_bucket_size=max(1, rate))
        for provider, rate in (settings.rate_limits or {}).items()
    }
    resolved_models: dict[int, ResolvedModel] = {}

    def resolve(spec: ModelLike, field_name: str) -> ResolvedModel:
        """Each distinct spec object once (a flat list is reused in every layer)."""
        if id(spec) not in resolved_models:
            resolved_models[id(spec)] = resolve_model(
                spec, field=field_name, defaults=settings, rate_limiters=limiters
            )
        return resolved_models[id(spec)]

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
        options=settings,
        secrets=tuple(
            sorted(
                {m.secret for m in resolved_models.values() if m.secret}
                | {key for m in resolved_models.values() for key in held_secrets(m.model)}
            )
        ),
        models=tuple(resolved_models.values()),
    )
    check_plan(plan)
    return plan


def check_plan(plan: MixturePlan) -> None:
    """Raise ``ValueError`` for settings that do not fit the plan's models and shape."""
    check_against_shape(plan.options, smallest_layer=min(map(len, plan.proposer_layers)))
    check_staircase(plan)
    check_confidence(plan)


def check_against_shape(settings: MixtureSettings, *, smallest_layer: int) -> None:
    """Raise ``ValueError`` for settings that do not fit the mixture (each is valid alone).

    Example:
        >>> check_against_shape(MixtureSettings(min_proposals=3), smallest_layer=2)
        Traceback (most recent call last):
        ...
        ValueError: min_proposals: 3 is more than the 2 proposers of the smallest layer
    """
    minimum = settings.min_proposals
    if minimum > smallest_layer:
        raise ValueError(
            f"min_proposals: {minimum} is more than the {smallest_layer} proposers of the "
            "smallest layer"
        )
    if settings.first_k is not None and not minimum <= settings.first_k <= smallest_layer:
        raise ValueError(
            f"first_k: must be between min_proposals ({minimum}) and the {smallest_layer} "
            f"proposers of the smallest layer (got {settings.first_k!r})"
        )
    if (
        settings.aggregation_window is not None
        and strategies.get(settings.aggregation).picks_reference
    ):
        raise ValueError(
            "aggregation_window: slides over syntheses; "
            f"aggregation={strategies.name_of(settings.aggregation)!r} "
            "picks one reference instead"
        )


def check_confidence(plan: MixturePlan) -> None:
    """Raise ``ValueError`` when the strategy weighs answers by confidence and a proposer of the
    last layer cannot return log-probabilities (a chat model without a ``logprobs`` option:
    ``ChatOpenAI`` and OpenAI-compatible servers, and the embedded models, have one)."""
    if not plan.strategy.needs_confidence:
        return
    for slot in plan.proposer_layers[-1]:
        chat_model = chat_model_under(slot.model)
        if chat_model is None or "logprobs" not in type(chat_model).model_fields:
            raise ValueError(
                f"aggregation={plan.strategy.name!r} weighs answers by the log-"
                f"probabilities of their tokens, which {slot.name} ({slot.model_name}) cannot "
                "return; use aggregation='vote', or a model with a logprobs option"
            )


STAIRCASE_STRATEGY = "synthesize"
"""The one strategy a staircase streams: the others decide on whole answers."""


def check_staircase(plan: MixturePlan) -> None:
    """Raise ``ValueError`` when ``staircase`` is on and the mixture cannot stream that way:
    another strategy, a window or early exit (they need whole answers), or a model that reads
    references but cannot continue a partial answer of its own (named, with the fix).
    """
    options = plan.options
    if options.staircase is None:
        return
    if plan.strategy.name != STAIRCASE_STRATEGY:
        raise ValueError(
            f"staircase: streams aggregation='{STAIRCASE_STRATEGY}' only; "
            f"aggregation={plan.strategy.name!r} decides on whole answers"
        )
    for name in ("aggregation_window", "early_exit"):
        if getattr(options, name):
            raise ValueError(f"staircase: cannot be combined with {name} (it needs whole answers)")
    readers: list[ProposerSlot | ResolvedModel] = [
        *(s for layer in plan.proposer_layers[1:] for s in layer),
        plan.aggregator,
    ]
    for reader in readers:
        if reader.continuation is None:
            raise ValueError(
                f"staircase: {reader.name} ({reader.model_name}) reads references but is not "
                "known to continue "
                "a partial answer of its own; if its server does, say how with "
                "ProposerSpec(continuation='prefill' or 'vllm'), else turn staircase off"
            )


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
            continuation=resolved.continuation,
            max_tokens=resolved.max_tokens,
            takes_turns=resolved.takes_turns,
            samples_in_one_request=resolved.samples_in_one_request,
            samples_per_request=resolved.samples_per_request,
        )
        for sample in range(resolved.samples)
    ]


def _field_name(proposers: Sequence[object], layer: int, position: int) -> str:
    if proposers and _is_layer_list(proposers[0]):
        return f"proposers[{layer - 1}][{position}]"
    return f"proposers[{position}]"
