"""Check a conversation before any paid call: clear ``ValueError``/``TypeError`` naming the turn."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

SUPPORTED_MESSAGES = (SystemMessage, HumanMessage, AIMessage, ToolMessage)
DEFAULT_MAX_INPUT_CHARS = 400_000


def validate_conversation(
    messages: Sequence[BaseMessage], *, max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
) -> None:
    """Refuse what no proposer can answer well, before any model is called.

    Raises:
        ValueError: an empty conversation, a last user turn that is empty or white space, or a
            conversation longer than ``max_input_chars`` characters.
        TypeError: an unsupported message type, or content that is not text.

    Example:
        >>> validate_conversation([HumanMessage("   ")])
        Traceback (most recent call last):
        ...
        ValueError: messages[0]: the user message is empty
    """
    if not messages:
        raise ValueError("messages: the conversation is empty; send at least one message")
    total = 0
    for position, message in enumerate(messages):
        if not isinstance(message, SUPPORTED_MESSAGES):
            raise TypeError(
                f"messages[{position}]: {type(message).__name__} is not supported; use system, "
                "human, ai or tool messages"
            )
        _check_text_only(message, position)
        total += len(message.text)
    if total > max_input_chars:
        raise ValueError(
            f"messages: the conversation has {total:,} characters, more than max_input_chars="
            f"{max_input_chars:,}"
        )
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None
    )
    if last_user is None:
        raise ValueError("messages: the conversation has no user message")
    if not messages[last_user].text.strip():
        raise ValueError(f"messages[{last_user}]: the user message is empty")


TOOL_CALL_BLOCKS = frozenset({"tool_call", "tool_use", "function_call", "invalid_tool_call"})
"""Content blocks of an AI turn's tool calls: sent to the aggregator, rendered as text for
proposers (``moa_graph.tool_rendering``)."""


def _check_text_only(message: BaseMessage, position: int) -> None:
    if isinstance(message.content, str):
        return
    allowed = {"text", *TOOL_CALL_BLOCKS} if isinstance(message, AIMessage) else {"text"}
    for block in message.content:
        kind = block.get("type") if isinstance(block, dict) else "text"
        if kind not in allowed:
            raise TypeError(
                f"messages[{position}]: content of type {kind!r} is not supported; "
                "the mixture passes text between models"
            )
