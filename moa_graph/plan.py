"""Validate a mixture's configuration once and turn it into a plan of ready-to-call models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moa_graph.models import ChatRunnable, ModelDefaults, ModelLike, ResolvedModel, resolve_model
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT


@dataclass(frozen=True)
class ProposerSlot:
    """One proposer call of a layer: a model (one sample of it) at a configured position."""

    layer: int
    index: int
    name: str
    model_name: str
    model: ChatRunnable
    system_prompt: str | None


@dataclass(frozen=True)
class MixturePlan:
    """The validated shape of a mixture: proposer layers, the aggregator and the run options.

    ``layers`` counts as in the paper: ``len(proposer_layers) + 1`` (the aggregator's layer).
    """

    proposer_layers: tuple[tuple[ProposerSlot, ...], ...]
    aggregator: ResolvedModel
    prompt: str
    min_proposals: int

    @property
    def layers(self) -> int:
        return len(self.proposer_layers) + 1

    @property
    def max_width(self) -> int:
        return max(len(layer) for layer in self.proposer_layers)


def build_plan(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    min_proposals: int = 1,
    proposer_defaults: ModelDefaults | None = None,
    aggregator_defaults: ModelDefaults | None = None,
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
    specs_per_layer = _layer_specs(proposers, layers)
    proposer_defaults = proposer_defaults or ModelDefaults()
    aggregator_defaults = aggregator_defaults or proposer_defaults
    resolved_cache: dict[int, ResolvedModel] = {}
    proposer_layers = []
    for layer_number, specs in enumerate(specs_per_layer, start=1):
        slots: list[ProposerSlot] = []
        for position, spec in enumerate(specs):
            field = _field_name(proposers, layer_number, position)
            # The same object listed in several layers is resolved (and constructed) once.
            resolved = resolved_cache.get(id(spec))
            if resolved is None:
                resolved = resolve_model(spec, field=field, defaults=proposer_defaults)
                resolved_cache[id(spec)] = resolved
            slots.extend(_slots_for(resolved, layer_number, first_index=len(slots)))
        proposer_layers.append(tuple(slots))
    if aggregator is None:
        raise ValueError("aggregator: a model is required")
    resolved_aggregator = resolve_model(
        aggregator, field="aggregator", defaults=aggregator_defaults
    )
    plan = MixturePlan(
        proposer_layers=tuple(proposer_layers),
        aggregator=resolved_aggregator,
        prompt=prompt,
        min_proposals=min_proposals,
    )
    _check_min_proposals(plan)
    return plan


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
            model_name=resolved.model_name,
            model=resolved.model,
            system_prompt=resolved.system_prompt,
        )
        for sample in range(resolved.samples)
    ]


def _field_name(proposers: Sequence[object], layer: int, position: int) -> str:
    if proposers and _is_layer_list(proposers[0]):
        return f"proposers[{layer - 1}][{position}]"
    return f"proposers[{position}]"


def _check_min_proposals(plan: MixturePlan) -> None:
    smallest = min(len(layer) for layer in plan.proposer_layers)
    minimum = plan.min_proposals
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"min_proposals: must be an integer >= 1 (got {minimum!r})")
    if minimum > smallest:
        raise ValueError(
            f"min_proposals: {minimum} is more than the {smallest} proposers of the smallest layer"
        )
