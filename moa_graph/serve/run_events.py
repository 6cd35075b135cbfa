"""The run-event stream: one mixture run as server-sent events (``POST /v1/moa/runs``).

The playground page reads it; any client may. The request is a chat-completion body (``model``,
``messages``, optionally ``seed`` and ``stop``) with ``choices``, the run's per-run choices among
:data:`RUN_EVENT_CHOICES`; it needs the same key as the API. The answer is ``text/event-stream``,
each event an ``event:`` name and one JSON ``data:`` line:

- ``run``: the run's shape: ``layers`` (each ``{"layer", "proposers": [{"index", "proposer",
  "model"}]}``), ``aggregator`` (``{"layer", "proposer", "model"}``), ``aggregation``,
  ``staircase``;
- the mixture's progress events, by their ``moa_event`` name (``proposal_started``,
  ``proposal_delta``, ``proposal_finished``, ``proposal_failed``, ``proposal_retrying``,
  ``layer_done``, ``round_started``, ``round_finished``, ``aggregation_started``, ...; see
  ``moa_graph.state.ProgressEvent``);
- ``answer_delta``: ``{"text"}``, the final answer as it is written;
- ``done``: ``{"answer", "calls", "usage", "first_token_s", "wall_s", "votes"}``;
- ``error``: ``{"message", "code"}``; the stream ends after it.

A client that goes away cancels the run, and with it every model call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import StreamMode
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from moa_graph.engine.events import aggregator_identity
from moa_graph.engine.graph import is_answer_token, settle_updates
from moa_graph.engine.run_choices import run_plan
from moa_graph.serve.asgi import ClientWatch, body_message, start_message
from moa_graph.serve.openai_requests import (
    ChatRequest,
    RequestError,
    parse_chat_request,
    parse_json,
)
from moa_graph.serve.openai_wire import SSE_HEADERS, dumps
from moa_graph.serve.options import ServeOptions
from moa_graph.state import Proposal

if TYPE_CHECKING:
    from moa_graph.chat_model import ChatMixtureOfAgents
    from moa_graph.engine.plan import MixturePlan

STREAM_MODES: Sequence[StreamMode] = ("custom", "messages", "updates")
"""What a run streams: progress events, the answer's tokens, and each step's outcome (passed
as a list: LangGraph yields ``(mode, payload)`` pairs for a list of modes only)."""

RUN_EVENT_CHOICES = ("staircase", "aggregation")
"""The per-run choices a run-event request may make (``choices``): neither adds a model call."""


def parse_run_request(
    body: bytes, *, served_name: str, moa: ChatMixtureOfAgents, **limits: Any
) -> tuple[ChatRequest, dict[str, Any]]:
    """The conversation and the per-run choices of a ``POST /v1/moa/runs`` body, checked.

    ``limits`` are ``parse_chat_request``'s (``max_input_chars``, ``max_json_depth``, ...;
    default: the mixture's input cap and the server's defaults).

    Raises:
        RequestError: 400 for a body the chat endpoint would refuse, an unknown choice or a
            value the mixture cannot take (naming it), 404 for another model.
    """
    limits.setdefault("max_input_chars", moa.max_input_chars)
    depth = limits.get("max_json_depth", ServeOptions().max_json_depth)
    payload = parse_json(body or b"null", depth)
    if not isinstance(payload, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    choices = payload.pop("choices", None) or {}
    if not isinstance(choices, dict):
        raise RequestError(400, "choices must be a JSON object.", param="choices")
    unknown = sorted(set(choices) - set(RUN_EVENT_CHOICES))
    if unknown:
        known = ", ".join(RUN_EVENT_CHOICES)
        raise RequestError(400, f"choices: {unknown[0]!r} is not one; known: {known}.",
                           param="choices")  # fmt: skip
    chat = parse_chat_request(dumps(payload), served_name=served_name, **limits)
    if chat.seed is not None:
        choices["seed"] = chat.seed
    try:
        run_plan(moa.plan, choices)
    except ValueError as exc:
        raise RequestError(400, f"choices: {exc}", param="choices") from None
    return chat, choices


def run_shape(plan: MixturePlan) -> dict[str, Any]:
    """The ``run`` event: who writes in each layer, and who answers.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from moa_graph.engine.plan import build_plan
        >>> from moa_graph.models import ProposerSpec
        >>> def spec(name):
        ...     return ProposerSpec(model=GenericFakeChatModel(messages=iter([])), name=name)
        >>> shape = run_shape(build_plan([spec("a"), spec("b")], aggregator=spec("c"), layers=2))
        >>> [p["proposer"] for p in shape["layers"][0]["proposers"]], shape["aggregator"]["layer"]
        (['a', 'b'], 2)
    """
    layers = [
        {"layer": layer[0].layer,
         "proposers": [{"index": s.index, "proposer": s.name, "model": s.model_name}
                       for s in layer]}
        for layer in plan.proposer_layers if layer
    ]  # fmt: skip
    return {
        "layers": layers,
        "aggregator": aggregator_identity(plan),
        "aggregation": plan.strategy.name,
        "staircase": plan.options.staircase,
    }  # fmt: skip


async def run_events(
    moa: ChatMixtureOfAgents, chat: ChatRequest, choices: dict[str, Any]
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    """One run of ``moa`` as ``(event name, data)`` pairs, from ``run`` to ``done``.

    Raises:
        Exception: whatever stops the run (the caller turns it into an ``error`` event).
    """
    plan = run_plan(moa.plan, choices)
    yield "run", run_shape(plan)
    started, first_token = time.perf_counter(), None
    context = {**choices, "aggregator_kwargs": {"stop": chat.stop} if chat.stop else {}}
    config = RunnableConfig(run_name="mixture_of_agents", **moa.plan.run_config())
    proposals: list[Proposal] = []
    final: BaseMessage | None = None
    stream = cast(
        AsyncGenerator[tuple[str, Any], None],  # with several modes: (mode, payload) pairs
        moa.graph.astream(
            {"messages": chat.messages}, config, context=context, stream_mode=list(STREAM_MODES)
        ),
    )
    async with aclosing(stream):  # closed at once when the client leaves: the calls stop
        async for mode, payload in stream:
            if mode == "custom" and isinstance(payload, dict) and "moa_event" in payload:
                event = dict(payload)
                yield event.pop("moa_event"), event
            elif mode == "messages":
                message, metadata = payload
                if isinstance(message, AIMessage) and is_answer_token(metadata) and message.text:
                    if first_token is None:
                        first_token = time.perf_counter() - started
                    yield "answer_delta", {"text": message.text}
            elif mode == "updates":
                proposals, final = settle_updates(payload, proposals, final)
    if final is None:
        raise RuntimeError("the mixture ended without an aggregator answer")
    yield "done", _done(final, proposals, first_token, time.perf_counter() - started)


def _done(
    final: BaseMessage, proposals: list[Proposal], first_token: float | None, wall: float
) -> dict[str, Any]:
    from moa_graph.chat_model import total_usage

    calls = sum(p.get("attempts", 1) for p in proposals if p["status"] != "cancelled")
    calls += int(final.response_metadata.get("moa_aggregator_calls", 1))
    return {
        "answer": final.text,
        "calls": calls,
        "usage": dict(total_usage(proposals, final)),
        "first_token_s": None if first_token is None else round(first_token, 3),
        "wall_s": round(wall, 3),
        "votes": final.response_metadata.get("moa_votes"),
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event.

    Example:
        >>> sse_event("answer_delta", {"text": "4"})
        b'event: answer_delta\\ndata: {"text":"4"}\\n\\n'
    """
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class RunEventsResponse(Response):
    """Streams one run's events; a client that leaves cancels the run.

    ``describe_error`` turns what stopped a run into the ``RequestError`` shown (redacted).
    """

    def __init__(
        self,
        moa: ChatMixtureOfAgents,
        chat: ChatRequest,
        choices: dict[str, Any],
        describe_error: Callable[[BaseException], RequestError],
    ) -> None:
        super().__init__()  # what is sent is decided in __call__
        self.moa, self.chat, self.choices = moa, chat, choices
        self.describe_error = describe_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with ClientWatch(receive, send) as client:
            await client.run(self._stream(client))

    async def _stream(self, client: ClientWatch) -> None:
        headers = [*SSE_HEADERS, ("X-Accel-Buffering", "no")]  # no proxy buffering
        if self.chat.ignored:
            headers.append(("X-MoA-Ignored-Params", ",".join(self.chat.ignored)))
        await client.send(start_message(200, headers))
        events = run_events(self.moa, self.chat, self.choices)
        try:
            async with aclosing(events):
                async for name, data in events:
                    await client.send(body_message(sse_event(name, data), more=True))
        except Exception as exc:
            error = self.describe_error(exc)
            data = {"message": error.message, "code": error.code}
            await client.send(body_message(sse_event("error", data), more=False))
            return
        await client.send(body_message(b"", more=False))
