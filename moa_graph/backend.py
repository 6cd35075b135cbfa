"""What a chat model may tell the mixture's engine about itself: the ``LocalBackend`` protocol.

A hosted model needs none of this. A backend that runs models itself (the embedded llama.cpp
engine, ``moa_graph.local.ChatLocalModel``, or your own) can make the engine use it better by
implementing ``moa_traits()``, returning ``BackendTraits``:

- ``continuation``: how it continues a partial answer of its own (staircase streaming needs it
  of every model that reads references): ``"prefill"`` or ``"vllm"``;
- ``samples_in_one_request`` / ``max_samples_per_request``: it draws ``n`` answers of one
  prompt in one request (Self-MoA's samples then cost one prompt reading), up to a limit;
- ``cheap_logprobs``: token log-probabilities cost it next to nothing (a ``vote`` records
  each answer's confidence then);
- ``takes_turns``: its generations share this machine's cores (a staircase then writes with it
  one chunk a call, so the other writers get their turn).

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> class MyEngine(GenericFakeChatModel):
    ...     def moa_traits(self) -> BackendTraits:
    ...         return BackendTraits(continuation="prefill", cheap_logprobs=True)
    >>> engine = MyEngine(messages=iter([]))
    >>> isinstance(engine, LocalBackend), traits_of(engine.bind(stop=["\\n"])).cheap_logprobs
    (True, True)
    >>> traits_of(GenericFakeChatModel(messages=iter([]))) == BackendTraits()
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from langchain_core.runnables import RunnableBinding

Continuation: TypeAlias = Literal["prefill", "vllm"]
"""How a model continues a partial answer of its own (see ``ProposerSpec.continuation``)."""

__all__ = ["BackendTraits", "Continuation", "LocalBackend", "traits_of"]


@dataclass(frozen=True)
class BackendTraits:
    """What a backend declares to the engine (every field defaults to "nothing special")."""

    continuation: Continuation | None = None
    """How it continues a partial answer of its own (``None``: it cannot, or it is unknown)."""
    samples_in_one_request: bool = False
    """It draws several answers of one prompt in one request (``n``)."""
    max_samples_per_request: int | None = None
    """At most this many answers in one request (``None``: no limit); more take more requests."""
    cheap_logprobs: bool = False
    """Token log-probabilities come with its answers at no real cost."""
    takes_turns: bool = False
    """Its generations take turns on shared cores (a staircase writes one chunk a call)."""


@runtime_checkable
class LocalBackend(Protocol):
    """A chat model that declares its ``BackendTraits`` to the engine (see the module)."""

    def moa_traits(self) -> BackendTraits:
        """What this model can do for the engine."""
        ...


_LEGACY_ATTRIBUTES = {
    "continuation": "moa_continuation",
    "samples_in_one_request": "moa_samples_in_one_request",
    "max_samples_per_request": "moa_max_samples_per_request",
    "cheap_logprobs": "moa_cheap_logprobs",
    "takes_turns": "moa_takes_turns",
}
"""The class attributes a model could declare its traits in before ``LocalBackend`` (still
read, for models that do)."""


def traits_of(model: Any) -> BackendTraits:
    """The traits of ``model`` (under any ``RunnableBinding``): its ``moa_traits()`` when it is
    a ``LocalBackend``, else what its ``moa_*`` attributes declare, else none."""
    while isinstance(model, RunnableBinding):
        model = model.bound
    if isinstance(model, LocalBackend):
        return model.moa_traits()
    found = {
        field: value
        for field, attribute in _LEGACY_ATTRIBUTES.items()
        if (value := getattr(model, attribute, None)) is not None
    }
    return BackendTraits(**found) if found else _NONE


_NONE = BackendTraits()
