"""Test-server-only pieces of the OpenAI wire format: scripted limits and tool calls."""

from __future__ import annotations

import json
from typing import Any

from moa_graph.testing.scripts import ScriptedToolCall, message_text, tokenize


def final_assistant_text(payload: dict[str, Any]) -> str | None:
    """The text of a final assistant message, which the server continues (as llama.cpp does);
    ``None`` when the conversation ends with another role."""
    messages = payload.get("messages") or []
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        return message_text(last)
    return None


def continuation(reply: str, prefix: str | None) -> str:
    """What the model writes after ``prefix``: the rest of ``reply`` when it starts with the
    prefix, else the whole ``reply`` (the script's answer follows what was given).

    Example:
        >>> continuation("1. Apple 2. Banana", "1. Apple"), continuation("Banana", "1.")
        (' 2. Banana', 'Banana')
    """
    if prefix is None:
        return reply
    return reply[len(prefix) :] if reply.startswith(prefix) else reply


def apply_limits(text: str, payload: dict[str, Any]) -> tuple[str, str]:
    """Apply ``stop`` and ``max_(completion_)tokens``; return ``(text, finish_reason)``."""
    stop = payload.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    cuts = [i for s in stops if isinstance(s, str) and s and (i := text.find(s)) >= 0]
    if cuts:
        text = text[: min(cuts)]
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        pieces = tokenize(text)
        if len(pieces) > limit:
            return "".join(pieces[: max(limit, 0)]), "length"
    return text, "stop"


def tool_calls_json(cid: str, calls: list[ScriptedToolCall]) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` entries; calls without an id get ``call_<cid>_<i>``."""
    return [
        {
            "id": call.id or f"call_{cid}_{i}",
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": call.arguments
                if isinstance(call.arguments, str)
                else json.dumps(call.arguments),
            },
        }
        for i, call in enumerate(calls)
    ]
