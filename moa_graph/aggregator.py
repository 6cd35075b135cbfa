"""``create_aggregator``: the Aggregate-and-Synthesize operator bound to one chat model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.runnables import Runnable, RunnableConfig

from moa_graph.models import ChatRunnable, ModelLike, resolve_model
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT, inject_references, with_system_prompt
from moa_graph.settings import MixtureSettings


class InjectReferences(Runnable[Mapping[str, Any], list[BaseMessage]]):
    """Turn ``{"messages": [...], "references": [...]}`` into the aggregator's messages
    (an optional ``"note"`` follows the references)."""

    def __init__(self, prompt: str, system_prompt: str | None = None) -> None:
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.name = "inject_references"

    def invoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[BaseMessage]:
        return self._call_with_config(self._inject, input, config)

    async def ainvoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[BaseMessage]:
        return self.invoke(input, config)  # pure CPU work: no thread hop needed

    def _inject(self, inputs: Mapping[str, Any]) -> list[BaseMessage]:
        if not isinstance(inputs, Mapping) or "messages" not in inputs:
            raise TypeError(
                "aggregator input must be a dict with 'messages' and 'references', "
                f"got {type(inputs).__name__}"
            )
        references = inputs.get("references", [])
        if isinstance(references, str) or not all(isinstance(r, str) for r in references):
            raise TypeError("aggregator input 'references' must be a list of strings")
        messages = with_system_prompt(convert_to_messages(inputs["messages"]), self.system_prompt)
        note = inputs.get("note")
        if note is not None and not isinstance(note, str):
            raise TypeError("aggregator input 'note' must be a string")
        return inject_references(messages, references, self.prompt, note)


def create_aggregator(
    model: ModelLike,
    *,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    name: str = "aggregate_and_synthesize",
) -> Runnable[Mapping[str, Any], BaseMessage]:
    """Create the paper's Aggregate-and-Synthesize operator bound to ``model``.

    The Runnable takes ``{"messages": [...], "references": ["...", ...]}``, adds the numbered
    references to the system message (see ``moa_graph.prompts.inject_references``) and returns
    the model's ``AIMessage``. It streams the model's tokens. ``create_moa_graph`` uses this same
    operator for every proposer of layer 2 and later and for the final aggregator.

    Args:
        model: a chat model, a ``"provider:model"`` string or a ``ProposerSpec``.
        prompt: the aggregation prompt; the paper's Table 1 text by default.
        name: the run name shown in traces.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> model = GenericFakeChatModel(messages=iter([AIMessage("Paris")]))
        >>> aggregate = create_aggregator(model)
        >>> aggregate.invoke({"messages": [("user", "Capital of France?")],
        ...                   "references": ["Paris.", "It is Paris"]}).content
        'Paris'
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: the aggregation prompt must be a non-empty string")
    resolved = resolve_model(model, field="model", defaults=MixtureSettings(max_tokens=None))
    return bind_aggregator(
        resolved.model, prompt=prompt, system_prompt=resolved.system_prompt, name=name
    )


def bind_aggregator(
    model: ChatRunnable, *, prompt: str, system_prompt: str | None = None, name: str
) -> Runnable[Mapping[str, Any], BaseMessage]:
    """The operator for an already-built model (what ``create_aggregator`` returns)."""
    chain = InjectReferences(prompt, system_prompt) | model
    return chain.with_config(run_name=name)
