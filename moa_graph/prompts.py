"""The Aggregate-and-Synthesize prompt and the operator that injects references.

The prompt is the text of Table 1 of the Mixture-of-Agents paper (arXiv 2406.04692), as used by
the authors' reference implementation (togethercomputer/MoA).
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage, SystemMessage

AGGREGATE_AND_SYNTHESIZE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n"
    "\n"
    "Responses from models:"
)
"""Table 1 of the paper, verbatim: the system prompt of every aggregator."""


def format_references(
    references: Sequence[str], prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT
) -> str:
    """Return the aggregator's system text: the prompt followed by the numbered references.

    Each reference is stripped of surrounding white space and numbered from 1 in the order given.

    Example:
        >>> format_references([" Paris. ", "Lyon"], prompt="Responses from models:")
        'Responses from models:\\n1. Paris.\\n2. Lyon'
    """
    return prompt + "".join(f"\n{i + 1}. {ref.strip()}" for i, ref in enumerate(references))


def inject_references(
    messages: Sequence[BaseMessage],
    references: Sequence[str],
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    note: str | None = None,
) -> list[BaseMessage]:
    """Apply the paper's Aggregate-and-Synthesize operator to a conversation.

    The references go into the system message: appended to the conversation's own system message
    when it starts with one (never a second system message), or as a new first system message.
    Every other turn passes through unchanged, and the input list is not modified. References
    are plain text inside that one system message, so a reference cannot add turns or roles.
    A ``note`` (such as how the references' final answers split) follows the references.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> out = inject_references([HumanMessage("2+2?")], ["4", "four"], prompt="Refs:")
        >>> out[0].content
        'Refs:\\n1. 4\\n2. four'
    """
    system_text = format_references(references, prompt)
    if note:
        system_text = f"{system_text}\n\n{note}"
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        merged = first.model_copy(update={"content": _join_content(first.content, system_text)})
        return [merged, *messages[1:]]
    return [SystemMessage(system_text), *messages]


def with_system_prompt(
    messages: Sequence[BaseMessage], system_prompt: str | None
) -> list[BaseMessage]:
    """Put a proposer's own system prompt before the conversation's (if any) in one system message.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> [m.type for m in with_system_prompt([HumanMessage("hi")], "Be brief.")]
        ['system', 'human']
    """
    if not system_prompt:
        return list(messages)
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        merged = first.model_copy(update={"content": _join_content(system_prompt, first.content)})
        return [merged, *messages[1:]]
    return [SystemMessage(system_prompt), *messages]


def _join_content(
    head: str | list[str | dict], tail: str | list[str | dict]
) -> str | list[str | dict]:
    """Join two message contents with a blank line, keeping multi-part (list) content a list."""
    if isinstance(head, str) and isinstance(tail, str):
        return head + "\n\n" + tail
    return [*_as_parts(head), {"type": "text", "text": "\n\n"}, *_as_parts(tail)]


def _as_parts(content: str | list[str | dict]) -> list[str | dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
