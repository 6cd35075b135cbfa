"""OpenAI chat-completion requests to LangChain messages, for ``moa_graph.serve``.

The policy is an allow-list, so a client can never redirect the mixture: only the conversation,
``stop`` (to the final aggregator) and ``seed`` (the run's draws, as the ``seed`` setting makes
them) reach the models. Sampling hints
(``temperature``, ``max_tokens``, ...) are accepted and ignored -- the mixture's configured
settings apply -- and reported back in the ``X-MoA-Ignored-Params`` response header. Anything
else (``tools``, ``n > 1``, ``base_url``, ``api_key``, unknown fields) is refused with 400, as
OpenAI refuses unrecognised arguments.

Example:
    >>> request = parse_chat_request(
    ...     b'{"model": "moa", "messages": [{"role": "user", "content": "Hi"}],'
    ...     b' "temperature": 0.2, "stop": "END"}',
    ...     served_name="moa",
    ... )
    >>> request.messages, request.stop, request.ignored
    ([HumanMessage(content='Hi', additional_kwargs={}, response_metadata={})], ['END'], \
('temperature',))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import RunnableConfig

from moa_graph.serve.openai_wire import error_body
from moa_graph.serve.options import ServeOptions
from moa_graph.settings import check_value
from moa_graph.validation import DEFAULT_MAX_INPUT_CHARS, validate_conversation

HONOURED = frozenset({"model", "messages", "stream", "stream_options", "stop", "seed"})
"""Request fields the server acts on."""

IGNORED = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "user", "metadata", "store", "service_tier",
    "parallel_tool_calls", "reasoning_effort", "prompt_cache_key", "safety_identifier",
    "verbosity", "top_logprobs",
})  # fmt: skip
"""Sampling hints and bookkeeping fields accepted but not applied (the mixture's settings win)."""

_NEUTRAL = {"n": 1, "logprobs": False, "modalities": ["text"]}
"""Fields accepted only with their default value (anything else is a feature we lack)."""

MAX_STOP_SEQUENCES = 4

_LIMITS = ServeOptions()


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error response.

    Args:
        status: HTTP status code.
        message: Human-readable reason (never contains a secret).
        type_: OpenAI error ``type``.
        code: OpenAI error ``code``.
        param: The request field at fault.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.code, self.param)


@dataclass(frozen=True)
class ChatRequest:
    """What the server takes from one ``POST /v1/chat/completions``.

    Attributes:
        messages: The conversation as LangChain messages (validated).
        stream: Whether to answer with server-sent events.
        include_usage: ``stream_options.include_usage``: end the stream with a usage chunk.
        stop: Stop sequences for the final aggregator, or ``None``.
        seed: The run's seed (sample k of a model draws with seed + k), or ``None``.
        ignored: Request fields that were accepted but not applied, sorted.
    """

    messages: list[BaseMessage]
    stream: bool = False
    include_usage: bool = False
    stop: list[str] | None = None
    seed: int | None = None
    ignored: tuple[str, ...] = ()

    @property
    def run_config(self) -> RunnableConfig | None:
        """The per-run choices the request makes, as a mixture's ``config`` (``None``: none).

        Example:
            >>> ChatRequest(messages=[], seed=7).run_config
            {'configurable': {'moa': {'seed': 7}}}
        """
        return None if self.seed is None else {"configurable": {"moa": {"seed": self.seed}}}


def parse_chat_request(
    body: bytes,
    *,
    served_name: str,
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
    max_json_depth: int = _LIMITS.max_json_depth,
    max_messages: int = _LIMITS.max_messages,
    max_message_calls: int = _LIMITS.max_message_calls,
    model_calls: int = 1,
) -> ChatRequest:
    """Parse and check a chat-completion request body.

    Everything is bounded before any model is called: the JSON's nesting (``max_json_depth``,
    tool-call arguments included), its text (valid Unicode: no lone surrogate, which no
    provider could be sent), the number of messages (``max_messages``) and the conversion cost
    of the run, messages times ``model_calls`` (``max_message_calls``).

    Raises:
        RequestError: 400 for invalid JSON, bad messages, refused fields or a request over a
            limit; 404 when ``model`` names another model than ``served_name``.

    Example:
        >>> deep = b'{"model": "moa", "messages": ' + b"[" * 40 + b"]" * 40 + b"}"
        >>> parse_chat_request(deep, served_name="moa")
        Traceback (most recent call last):
        ...
        moa_graph.serve.openai_requests.RequestError: The request's JSON is nested deeper \
than 32 levels.
    """
    payload = parse_json(body or b"null", max_json_depth, check=False)
    if not isinstance(payload, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    raw_messages = payload.get("messages")
    if isinstance(raw_messages, list):  # first: counting is cheap, checking them is not
        _check_count(len(raw_messages), max_messages, max_message_calls, model_calls)
    _check_json(payload, max_json_depth)
    fields = {key: value for key, value in payload.items() if value is not None}
    _check_fields(fields)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "You must provide a model parameter.", param="model")
    if model != served_name:
        raise RequestError(
            404,
            f"The model `{model}` does not exist; this server serves `{served_name}`.",
            code="model_not_found",
            param="model",
        )
    messages = to_messages(fields.get("messages"), max_json_depth=max_json_depth)
    try:
        validate_conversation(messages, max_input_chars=max_input_chars)
    except (ValueError, TypeError) as exc:
        raise RequestError(400, str(exc), param="messages") from None
    stream = _flag(fields, "stream")
    options = fields.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options must be an object.", param="stream_options")
    return ChatRequest(
        messages=messages,
        stream=stream,
        include_usage=stream and bool(options.get("include_usage")),
        stop=_stop(fields.get("stop")),
        seed=_seed(fields.get("seed")),
        ignored=tuple(sorted(key for key in fields if key in IGNORED)),
    )


def parse_json(
    text: bytes | str,
    max_depth: int,
    what: str = "the JSON body of your request",
    *,
    check: bool = True,
) -> Any:
    """``text`` parsed, refused with 400 unless valid JSON at most ``max_depth`` deep whose
    strings are valid Unicode (checked unless ``check=False``: then only parsed).

    Example:
        >>> parse_json(b'{"a": [1]}', 32)
        {'a': [1]}
    """
    try:
        value = json.loads(text)
    except RecursionError:  # nested deeper than the parser's stack allows
        raise _too_deep(max_depth) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"We could not parse {what}: {exc}") from None
    if check:
        _check_json(value, max_depth)
    return value


def _check_json(value: Any, max_depth: int, depth: int = 0) -> None:
    """Refuse JSON nested over ``max_depth`` levels, or with a string that is not valid Unicode
    (a lone surrogate such as ``"\\ud800"``, which JSON allows and UTF-8 cannot encode).

    Iterative, so it cannot exhaust the stack whatever the depth.
    """
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if not isinstance(item, dict | list):
            continue
        if level >= max_depth:
            raise _too_deep(max_depth)
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, level + 1))
        else:
            stack.extend((child, level + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            400,
            f"The request holds a string that is not valid Unicode (a lone surrogate "
            f"{text[exc.start]!r} at position {exc.start}); send UTF-8 text.",
            code="invalid_unicode",
        ) from None


def _too_deep(max_depth: int) -> RequestError:
    return RequestError(
        400, f"The request's JSON is nested deeper than {max_depth} levels.", code="too_deep"
    )


def _check_count(count: int, max_messages: int, max_message_calls: int, calls: int) -> None:
    """Refuse a conversation too long to convert for every model call of the run."""
    if count > max_messages:
        raise RequestError(
            400,
            f"messages: {count:,} messages, more than this server accepts ({max_messages:,}; "
            "its --max-messages).",
            code="too_many_messages",
            param="messages",
        )
    if count * calls > max_message_calls:
        raise RequestError(
            400,
            f"messages: {count:,} messages for the {calls} model calls of a run is "
            f"{count * calls:,} message conversions, more than this server accepts "
            f"({max_message_calls:,}, its --max-message-calls): send at most "
            f"{max_message_calls // calls:,} messages.",
            code="too_many_messages",
            param="messages",
        )


def _check_fields(fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if key in HONOURED or key in IGNORED:
            continue
        if key in _NEUTRAL:
            if value != _NEUTRAL[key]:
                raise RequestError(400, f"{key}={value!r} is not supported here.", param=key)
        elif key in ("tools", "functions", "tool_choice", "function_call"):
            if value and value != "none":
                raise RequestError(400, f"{key}: a mixture of agents calls no tools.", param=key)
        elif key == "response_format":
            if not isinstance(value, dict) or value.get("type") != "text":
                raise RequestError(400, "response_format: only text answers.", param=key)
        else:
            raise RequestError(400, f"Unrecognized request argument supplied: {key}", param=key)


def _flag(fields: dict[str, Any], key: str) -> bool:
    value = fields.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(400, f"{key} must be a boolean.", param=key)
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(check_value("seed", value))
    except ValueError as exc:
        raise RequestError(400, str(exc), param="seed") from None


def _stop(value: Any) -> list[str] | None:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return None
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > MAX_STOP_SEQUENCES
    ):
        raise RequestError(
            400,
            f"stop must be a string or up to {MAX_STOP_SEQUENCES} non-empty strings.",
            param="stop",
        )
    return list(stops) or None


def to_messages(raw: Any, *, max_json_depth: int = _LIMITS.max_json_depth) -> list[BaseMessage]:
    """OpenAI chat messages (``system``/``developer``, ``user``, ``assistant``, ``tool``).

    Content may be a string or a list of ``{"type": "text", "text": ...}`` parts (joined).

    Raises:
        RequestError: 400 naming the message at fault.

    Example:
        >>> [type(m).__name__ for m in to_messages([
        ...     {"role": "system", "content": "Be brief."},
        ...     {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ... ])]
        ['SystemMessage', 'HumanMessage']
    """
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty array.", param="messages")
    return [_message(item, i, max_json_depth) for i, item in enumerate(raw)]


def _message(item: Any, i: int, max_json_depth: int) -> BaseMessage:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise RequestError(400, f"{where} must be an object.", param=where)
    role = item.get("role")
    name = item.get("name") if isinstance(item.get("name"), str) else None
    if role == "assistant":
        tool_calls = _tool_calls(item.get("tool_calls"), where, max_json_depth)
        content = "" if item.get("content") is None and tool_calls else _text(item, where)
        return AIMessage(content, name=name, tool_calls=tool_calls)
    content = _text(item, where)
    if role in ("system", "developer"):
        return SystemMessage(content, name=name)
    if role == "user":
        return HumanMessage(content, name=name)
    if role == "tool":
        call_id = item.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError(400, f"{where}: a tool message needs tool_call_id.", param=where)
        return ToolMessage(content, tool_call_id=call_id)
    raise RequestError(
        400,
        f"{where}: role {role!r} is not supported; use system, developer, user, assistant or tool.",
        param=where,
    )


def _text(item: dict[str, Any], where: str) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RequestError(
                    400,
                    f"{where}: content of type {kind!r} is not supported; the mixture passes "
                    "text between models.",
                    param=where,
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(400, f"{where}: content must be a string or text parts.", param=where)


def _tool_calls(raw: Any, where: str, max_json_depth: int) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` as LangChain wants them, each checked: a list of
    ``{"id": str?, "function": {"name": non-empty str, "arguments": JSON object text}}``."""
    if not raw:
        return []
    if not isinstance(raw, list):
        raise RequestError(400, f"{where}: tool_calls must be an array.", param=where)
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise RequestError(400, f"{at}: give an object with a function.", param=at)
        name, text, call_id = function.get("name"), function.get("arguments"), call.get("id")
        if not isinstance(name, str) or not name:
            raise RequestError(400, f"{at}: function.name must be a non-empty string.", param=at)
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError(400, f"{at}: id must be a string.", param=at)
        if text is not None and not isinstance(text, str):
            raise RequestError(400, f"{at}: function.arguments must be a string.", param=at)
        arguments = parse_json(text or "{}", max_json_depth, f"{at}: function.arguments")
        if not isinstance(arguments, dict):
            raise RequestError(400, f"{at}: function.arguments must be a JSON object.", param=at)
        calls.append({"name": name, "args": arguments, "id": call_id})
    return calls


def openai_usage(usage: UsageMetadata | None) -> dict[str, int]:
    """LangChain usage to OpenAI's ``usage`` object (zeros when unknown).

    Example:
        >>> openai_usage({"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})
        {'prompt_tokens': 3, 'completion_tokens': 2, 'total_tokens': 5}
    """
    usage = usage or UsageMetadata(input_tokens=0, output_tokens=0, total_tokens=0)
    return {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }


def finish_reason(metadata: dict[str, Any]) -> str:
    """The aggregator's finish reason when OpenAI knows it, else ``"stop"``.

    Example:
        >>> finish_reason({"finish_reason": "length"}), finish_reason({})
        ('length', 'stop')
    """
    reason = metadata.get("finish_reason")
    return reason if reason in ("stop", "length", "content_filter") else "stop"
