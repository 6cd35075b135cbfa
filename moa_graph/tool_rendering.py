"""Tool turns as plain text, for proposers that are advisors and never call tools.

Only the aggregator gets the tools (``ChatMixtureOfAgents.bind_tools``). Proposers still see the
whole conversation, but an ``AIMessage`` with tool calls and a ``ToolMessage`` would be refused
by a provider that has no tool support (or by one that wants the tools declared), so those turns
are rewritten as text before a proposer gets them:

- an AI turn with tool calls stays an AI turn, its text followed by one line per call:
  ``Called tool add (id call_1) with arguments {"a": 1, "b": 2}``;
- each run of tool results becomes one user turn with one paragraph per result:
  ``Tool result (add, id call_1): 3`` (``Tool error (...)`` when the tool failed).

Every other turn passes through as the same object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

__all__ = ["render_tool_call", "render_tool_result", "render_tool_turns"]

_TOOL_BLOCKS = frozenset({"tool_use", "tool_call", "function_call", "server_tool_use"})


def render_tool_turns(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Rewrite tool calls and tool results as text turns; other turns pass through unchanged.

    Consecutive tool results (parallel tool calls) become one user turn, so roles still
    alternate. The input list and its messages are not modified.

    Example:
        >>> from langchain_core.messages import HumanMessage, ToolMessage
        >>> call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}
        >>> out = render_tool_turns([HumanMessage("1 + 2?"), AIMessage("", tool_calls=[call]),
        ...                          ToolMessage("3", tool_call_id="c1")])
        >>> [(m.type, m.content) for m in out[1:]]  # doctest: +NORMALIZE_WHITESPACE
        [('ai', 'Called tool add (id c1) with arguments {"a": 1, "b": 2}'),
         ('human', 'Tool result (add, id c1): 3')]
    """
    names: dict[str, str] = {}
    rendered: list[BaseMessage] = []
    results: list[str] = []
    for message in messages:
        if isinstance(message, ToolMessage):
            results.append(render_tool_result(message, names.get(message.tool_call_id)))
            continue
        if results:
            rendered.append(HumanMessage("\n\n".join(results)))
            results = []
        if isinstance(message, AIMessage) and _has_tool_calls(message):
            for call in message.tool_calls:
                if call.get("id"):
                    names[str(call["id"])] = call["name"]
            rendered.append(_render_ai_turn(message))
        else:
            rendered.append(message)
    if results:
        rendered.append(HumanMessage("\n\n".join(results)))
    return rendered


def render_tool_call(name: str, args: Any, call_id: str | None = None) -> str:
    """One tool call as a line of text.

    Example:
        >>> render_tool_call("search", {"q": "MoA"}, "c7")
        'Called tool search (id c7) with arguments {"q": "MoA"}'
    """
    ident = f" (id {call_id})" if call_id else ""
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f"Called tool {name}{ident} with arguments {shown}"


def render_tool_result(message: ToolMessage, name: str | None = None) -> str:
    """One tool result as text, naming the tool (``name`` when the message has none) and id.

    Example:
        >>> render_tool_result(ToolMessage("42", name="lookup", tool_call_id="c2"))
        'Tool result (lookup, id c2): 42'
    """
    label = "Tool error" if message.status == "error" else "Tool result"
    tool = message.name or name or "tool"
    return f"{label} ({tool}, id {message.tool_call_id}): {_text(message.content)}"


def _has_tool_calls(message: AIMessage) -> bool:
    if message.tool_calls or message.invalid_tool_calls:
        return True
    return isinstance(message.content, list) and any(
        isinstance(block, dict) and block.get("type") in _TOOL_BLOCKS for block in message.content
    )


def _render_ai_turn(message: AIMessage) -> AIMessage:
    lines = [_text(message.content)] if _text(message.content).strip() else []
    seen: set[str] = set()
    for call in message.tool_calls:
        seen.add(str(call.get("id")))
        lines.append(render_tool_call(call["name"], call["args"], call.get("id")))
    for bad in message.invalid_tool_calls:
        seen.add(str(bad.get("id")))
        lines.append(
            render_tool_call(bad.get("name") or "tool", bad.get("args") or "", bad.get("id"))
        )
    if isinstance(message.content, list):  # tool-use blocks not mirrored in ``tool_calls``
        for block in message.content:
            if (
                isinstance(block, dict)
                and block.get("type") in _TOOL_BLOCKS
                and str(block.get("id")) not in seen
            ):
                args = block.get("input", block.get("args", block.get("arguments", {})))
                lines.append(
                    render_tool_call(str(block.get("name", "tool")), args, block.get("id"))
                )
    return AIMessage("\n".join(lines), name=message.name, id=message.id)


def _text(content: str | list[str | dict[str, Any]]) -> str:
    """The text of a message's content: its text parts, other blocks left out."""
    if isinstance(content, str):
        return content
    parts = [
        block if isinstance(block, str) else str(block.get("text", ""))
        for block in content
        if isinstance(block, str) or block.get("type") == "text"
    ]
    return "".join(parts)
