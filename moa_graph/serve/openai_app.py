"""Serve a mixture as an OpenAI-compatible endpoint: ``/v1/chat/completions`` and ``/v1/models``.

Any OpenAI client or tool can then use the mixture like one model: answers stream token by token
as the aggregator writes them, and ``usage`` sums every call of the run. The app is Starlette,
served by uvicorn: :func:`create_app` for your own ASGI stack, :class:`MoAServer` on a thread,
:func:`serve` (``moa-graph serve``) in the foreground, with several worker processes if asked.
What a request may change is described in ``moa_graph.serve.openai_requests``; the limits a
public server needs (API key before the body, body size and time) in ``moa_graph.serve.guards``.

Example:
    >>> import openai
    >>> from moa_graph.presets import local_tiny
    >>> with MoAServer(local_tiny().chat_model(), port=0) as server:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    ...     answer = client.chat.completions.create(
    ...         model=server.model_name, messages=[{"role": "user", "content": "Hi!"}])
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import math
import os
import secrets
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import fields
from typing import Any, TypedDict, TypeVar

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from moa_graph import strategies
from moa_graph.chat_model import THREAD_KWARG, ChatMixtureOfAgents
from moa_graph.errors import MoAError, ThreadInUseError
from moa_graph.redact import redact
from moa_graph.serve import openai_wire
from moa_graph.serve.asgi import ClientWatch, body_message, routing_error, start_message
from moa_graph.serve.guards import FramingGuard, HeadGuard, read_body
from moa_graph.serve.kept_runs import (
    RETRY_OPEN_AFTER,
    KeptRuns,
    KeyInUseError,
    StoreUnavailableError,
)
from moa_graph.serve.logs import log_config
from moa_graph.serve.openai_requests import (
    ChatRequest,
    RequestError,
    finish_reason,
    openai_usage,
    parse_chat_request,
)
from moa_graph.serve.options import ServeOptions
from moa_graph.serve.playground_page import playground_routes
from moa_graph.serve.run_events import RunEventsResponse, parse_run_request
from moa_graph.serve.runner import GuardedH11Protocol, UvicornServer, http_url
from moa_graph.settings import check_known

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULTS = ServeOptions()
"""The server options' defaults (``moa_graph.serve.options``)."""

API_KEY_ENV = "MOA_GRAPH_API_KEY"
"""The environment variable holding the served API key (workers read it; never logged)."""

SERVE_ENV = "MOA_GRAPH_SERVE"
"""The environment variable carrying :func:`serve`'s settings to its worker processes (JSON)."""

APP_FACTORY = "moa_graph.serve.openai_app:app_from_environment"

# h11: strict framing and request heads bounded to 16 KiB (httptools has no header limit).
HTTP_IMPLEMENTATION = "h11"

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The request header naming a run to keep (with a ``checkpoint``): a retry with the same key
finishes or repeats that run instead of paying for it again (as Stripe's and the IETF draft's
header of that name)."""

MAX_IDEMPOTENCY_KEY = 255
"""The longest ``Idempotency-Key`` accepted, in characters."""


class MixtureSource(TypedDict, total=False):
    """A mixture described in JSON, so every worker process can build its own.

    Keys: ``preset`` (a name in ``moa_graph.presets.PRESETS``), ``config`` (a TOML recipe
    path; not with ``preset``; neither: the default preset), ``overrides`` (settings
    replacing the recipe's, as keyword arguments of ``Recipe.chat_model``).
    """

    preset: str | None
    config: str | None
    overrides: dict[str, Any]


def mixture_from_source(source: MixtureSource) -> ChatMixtureOfAgents:
    """Build the mixture ``source`` describes.

    Raises:
        ValueError: For an unknown preset, an unreadable recipe or a bad setting.

    Example:
        >>> mixture_from_source({"preset": "local-tiny", "overrides": {"layers": 2}}).layers
        2
    """
    from moa_graph.presets import choose_recipe

    overrides = source.get("overrides", {})
    own_models = "proposers" in overrides and "aggregator" in overrides
    recipe = choose_recipe(
        preset=source.get("preset"), config=source.get("config"), own_models=own_models
    )
    return recipe.chat_model(**overrides)


REQUEST_LIMITS = ("max_json_depth", "max_messages", "max_message_calls", "max_head_bytes")
"""The ``ServeOptions`` that bound what one request may ask of the app (keywords of
:func:`create_app` and :class:`MoAServer`)."""

CONNECTION_LIMITS = ("max_connections", "head_timeout")
"""The ``ServeOptions`` that bound connections (uvicorn's protocol, :class:`MoAServer`)."""


def model_calls(moa: ChatMixtureOfAgents) -> int:
    """The model calls of one run of ``moa``: each proposer slot and the aggregator, once.

    Example:
        >>> from moa_graph.presets import local_tiny
        >>> model_calls(local_tiny().chat_model()) >= 2
        True
    """
    return sum(len(layer) for layer in moa.plan.proposer_layers) + 1


def guarded_protocol(
    max_connections: int = DEFAULTS.max_connections, head_timeout: float = DEFAULTS.head_timeout
) -> Any:
    """uvicorn's h11 protocol with the connection limits (``uvicorn.run(http=...)``)."""
    return functools.partial(
        GuardedH11Protocol, max_connections=max_connections, head_timeout=head_timeout
    )


async def _wait_for(awaitable: Any, timeout: float | None) -> Any:
    """``asyncio.wait_for`` as Python 3.12 has it: a cancellation is never dropped."""
    async with asyncio.timeout(timeout):
        return await awaitable


def cancellable_streams() -> None:
    """On Python 3.11, make ``langchain_openai`` stop a stream whose run is cancelled.

    It waits for each chunk of a stream in ``asyncio.wait_for`` (its ``stream_chunk_timeout``),
    and on Python 3.11 ``wait_for`` drops a cancellation that comes as the chunk arrives
    (CPython gh-86296, fixed in 3.12). Under load every chunk is already there when the
    cancellation lands, so even repeated cancellations were dropped: 100 of 100 aggregator
    streams ran on after their clients left. Its module is given 3.12's ``wait_for`` (the
    rest of ``asyncio`` unchanged). Nothing is changed on 3.12 and later, or without
    ``langchain_openai``. Idempotent.
    """
    if sys.version_info >= (3, 12):
        return
    try:
        from langchain_openai.chat_models import _client_utils
    except ImportError:
        return
    if isinstance(_client_utils.asyncio, types.ModuleType):  # not yet replaced
        fixed = types.SimpleNamespace(**vars(asyncio))
        fixed.wait_for = _wait_for
        _client_utils.asyncio = fixed  # type: ignore[assignment]


class _Endpoints:
    """The routes of one served mixture, and what they share."""

    def __init__(
        self,
        moa: ChatMixtureOfAgents,
        *,
        model_name: str | None,
        api_key: str | None,
        max_body_bytes: int,
        body_timeout: float,
        checkpoint: str | None = None,
        lease_seconds: float = DEFAULTS.lease_seconds,
        max_json_depth: int = DEFAULTS.max_json_depth,
        max_messages: int = DEFAULTS.max_messages,
        max_message_calls: int = DEFAULTS.max_message_calls,
        max_head_bytes: int = DEFAULTS.max_head_bytes,
        playground: bool = DEFAULTS.playground,
    ) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key: give a non-empty key, or None for no authentication")
        if max_body_bytes < 1 or body_timeout <= 0:
            raise ValueError("max_body_bytes and body_timeout must be positive")
        self.moa = moa
        cancellable_streams()
        self.model_name = model_name or moa.model_name
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self._api_key = api_key.encode() if api_key else None
        self._secrets = tuple(s for s in (api_key, *moa.plan.secrets) if s)
        self.kept_runs = KeptRuns(checkpoint, lease_seconds) if checkpoint else None
        self.max_json_depth = max_json_depth
        self.max_messages = max_messages
        self.max_message_calls = max_message_calls
        self.max_head_bytes = max_head_bytes
        self.playground = playground

    def app(self) -> Starlette:
        routes = [
            route
            for prefix in ("/v1", "")
            for route in (
                Route(prefix + "/chat/completions", self.chat, methods=["POST"]),
                Route(prefix + "/models", self.models, methods=["GET"]),
            )
        ]
        routes.append(Route("/v1/moa/runs", self.runs, methods=["POST"]))
        if self.playground:
            routes += playground_routes(
                auth_required=self._api_key is not None,
                model_name=self.model_name,
                aggregations=[strategy.name for strategy in strategies.all_strategies()],
            )
        app = Starlette(
            routes=routes,
            middleware=[
                Middleware(HeadGuard, max_head_bytes=self.max_head_bytes),
                Middleware(FramingGuard),
            ],
            exception_handlers={HTTPException: routing_error},
            lifespan=self._lifespan,
        )
        # Starlette answers /v1/models/ with a redirect to the URL built from the request's
        # Host header (a forged Host was echoed, before authentication): 404 instead.
        app.router.redirect_slashes = False
        return app

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the store of kept runs as the server starts (an unreachable one stops it), and
        close it as it stops. A mounted app gets no lifespan: the store opens with the first
        kept request and closes with the process."""
        if self.kept_runs is not None:
            await self.kept_runs.open()
        try:
            yield
        finally:
            if self.kept_runs is not None:
                await self.kept_runs.close()

    def _unauthorized(self, request: Request) -> Response | None:
        """401 unless the request carries the key (compared in constant time); nothing read."""
        if self._api_key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        if hmac.compare_digest(given, self._api_key):
            return None
        return error_response(_UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})

    async def models(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "moa-graph"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        try:
            body = await read_body(
                request, max_bytes=self.max_body_bytes, timeout=self.body_timeout
            )
            # Off the event loop: parsing and checking up to max_body_bytes of JSON takes a
            # few hundred ms of CPU, during which other requests would wait.
            chat = await anyio.to_thread.run_sync(self._parse, body)
            thread = self._thread_of(request)
        except RequestError as exc:
            return error_response(exc)
        if IDEMPOTENCY_HEADER in request.headers and self.kept_runs is None:
            chat = dataclasses.replace(chat, ignored=(*chat.ignored, IDEMPOTENCY_HEADER))
        return _RunResponse(self, chat, thread)

    def _limits(self) -> dict[str, Any]:
        """What ``parse_chat_request`` checks a request against, for the served mixture."""
        return {
            "max_input_chars": self.moa.max_input_chars,
            "max_json_depth": self.max_json_depth,
            "max_messages": self.max_messages,
            "max_message_calls": self.max_message_calls,
            "model_calls": model_calls(self.moa),
        }

    def _parse(self, body: bytes) -> ChatRequest:
        """The chat request ``body`` says, checked against every limit (on a worker thread)."""
        return _client_error(
            lambda: parse_chat_request(body, served_name=self.model_name, **self._limits())
        )

    def _parse_run(self, body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
        """The run request ``body`` says, checked against every limit (on a worker thread)."""
        return _client_error(
            lambda: parse_run_request(
                body, served_name=self.model_name, moa=self.moa, **self._limits()
            )
        )

    async def runs(self, request: Request) -> Response:
        """``POST /v1/moa/runs``: one run as server-sent events (``moa_graph.serve.run_events``)."""
        if denied := self._unauthorized(request):
            return denied
        try:
            body = await read_body(
                request, max_bytes=self.max_body_bytes, timeout=self.body_timeout
            )
            chat, choices = await anyio.to_thread.run_sync(self._parse_run, body)
        except RequestError as exc:
            return error_response(exc)
        return RunEventsResponse(self.moa, chat, choices, self.run_error)

    def _thread_of(self, request: Request) -> str | None:
        """The thread keeping this request's run: from its ``Idempotency-Key``, if any and
        if runs are kept (``checkpoint``)."""
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None or self.kept_runs is None:
            return None
        if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise RequestError(
                400,
                f"{IDEMPOTENCY_HEADER}: give 1 to {MAX_IDEMPOTENCY_KEY} characters",
                code="invalid_idempotency_key",
            )
        return f"idempotency:{self.model_name}:{key}"

    def run_error(self, exc: BaseException) -> RequestError:
        """A failed run as an error response: 502 for a mixture failure, 422 for an
        ``Idempotency-Key`` reused with another conversation, else 500; redacted."""
        text = redact(f"{type(exc).__name__}: {exc}", self._secrets)
        if isinstance(exc, ThreadInUseError):
            message = f"{IDEMPOTENCY_HEADER} already used for another request; give a new key"
            return RequestError(422, message, code="idempotency_key_reused")
        if isinstance(exc, KeyInUseError):
            message = f"a run of this {IDEMPOTENCY_HEADER} is in progress; retry later"
            return RequestError(409, message, code="idempotency_key_in_use")
        if isinstance(exc, StoreUnavailableError):
            return RequestError(503, "the run store is unreachable", code="store_unavailable")
        if isinstance(exc, MoAError):
            logger.warning("mixture run failed: %s", text)
            return RequestError(502, text, type_="server_error", code="mixture_failed")
        logger.error("mixture run crashed: %s", text)
        return RequestError(500, text, type_="server_error", code="internal_error")


def _client_error(parse: Callable[[], T]) -> T:
    """``parse()``, whose failures are the client's: a ``RequestError`` always (400).

    Every malformed request should raise a ``RequestError`` with its reason; one that slips
    through (a message LangChain refuses) is still the client's, not a 500 with a traceback.
    """
    try:
        return parse()
    except RequestError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        logger.info("request refused: %s", redact(f"{type(exc).__name__}: {exc}"))
        raise RequestError(400, f"The request is malformed: {type(exc).__name__}.") from None


_UNAUTHORIZED = RequestError(
    401,
    "Incorrect or missing API key: send Authorization: Bearer <key>.",
    code="invalid_api_key",
)


def error_response(error: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class _RunResponse(Response):
    """Answers a chat request by running the mixture; a client that leaves cancels the run."""

    def __init__(self, endpoints: _Endpoints, chat: ChatRequest, thread: str | None) -> None:
        super().__init__()  # what is sent is decided in __call__
        self.endpoints = endpoints
        self.chat = chat
        self.thread = thread
        self.headers_out = {"X-MoA-Ignored-Params": ",".join(chat.ignored)} if chat.ignored else {}
        self.cid = f"chatcmpl-moa{secrets.token_hex(12)}"
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with ClientWatch(receive, send) as client:
            await client.run(self._answer(scope, receive, client))

    async def _answer(self, scope: Scope, receive: Receive, client: ClientWatch) -> None:
        """Run the mixture, or with a key, the kept mixture on the key's leased thread."""
        answer = self._stream if self.chat.stream else self._complete
        runs = self.endpoints.kept_runs
        if self.thread is None or runs is None:
            await answer(scope, receive, client, self.endpoints.moa, {})
            return
        async with AsyncExitStack() as lease:
            try:
                moa = await runs.mixture(self.endpoints.moa)
                await lease.enter_async_context(runs.leased(self.thread))
            except (KeyInUseError, StoreUnavailableError) as exc:
                headers = dict(self.headers_out)
                wait = exc.retry_after if isinstance(exc, KeyInUseError) else RETRY_OPEN_AFTER
                headers["Retry-After"] = str(math.ceil(wait))
                response = error_response(self.endpoints.run_error(exc), headers)
                await response(scope, receive, client.send)
                return
            await answer(scope, receive, client, moa, {THREAD_KWARG: self.thread})

    async def _complete(
        self,
        scope: Scope,
        receive: Receive,
        client: ClientWatch,
        moa: ChatMixtureOfAgents,
        kwargs: dict[str, Any],
    ) -> None:
        """Answer with one ``chat.completion`` object."""
        endpoints = self.endpoints
        try:
            answer = await moa.ainvoke(
                self.chat.messages, self.chat.run_config, stop=self.chat.stop, **kwargs
            )
        except Exception as exc:
            response = error_response(endpoints.run_error(exc), self.headers_out)
            await response(scope, receive, client.send)
            return
        body = openai_wire.completion_body(
            self.cid,
            endpoints.model_name,
            self.created,
            answer.text,
            finish_reason(answer.response_metadata),
            openai_usage(getattr(answer, "usage_metadata", None)),
        )
        await JSONResponse(body, headers=self.headers_out)(scope, receive, client.send)

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        client: ClientWatch,
        moa: ChatMixtureOfAgents,
        kwargs: dict[str, Any],
    ) -> None:
        """Answer with server-sent ``chat.completion.chunk`` events as the aggregator writes.

        The response starts with the first token, so a run that fails before any token
        (e.g. every proposer failed) is a plain HTTP error; a failure after it is an SSE
        ``{"error": ...}`` event, which OpenAI clients raise as ``APIError``.
        """
        endpoints = self.endpoints
        fmt = openai_wire.ChunkFormatter(
            self.cid, endpoints.model_name, self.created, 1, self.chat.include_usage
        )
        headers = [*openai_wire.SSE_HEADERS, *self.headers_out.items()]
        started = False
        usage, finish = None, "stop"
        chunks = _pumped(
            moa.astream(self.chat.messages, self.chat.run_config, stop=self.chat.stop, **kwargs)
        )
        try:
            async for chunk in chunks:
                if chunk.usage_metadata:
                    usage = chunk.usage_metadata
                if chunk.chunk_position == "last":
                    finish = finish_reason(chunk.response_metadata)
                if not chunk.text:
                    continue
                if not started:
                    await client.send(start_message(200, headers))
                    await client.send(body_message(fmt.event(openai_wire.ROLE_DELTA), more=True))
                    started = True
                await client.send(body_message(fmt.content(chunk.text), more=True))
        except Exception as exc:
            error = endpoints.run_error(exc)
            if not started:
                await error_response(error, self.headers_out)(scope, receive, client.send)
                return
            event = openai_wire.sse(openai_wire.dumps(error.body()))
            await client.send(body_message(event + openai_wire.SSE_DONE, more=False))
            return
        finally:
            await _aclose(chunks)
        if not started:
            await client.send(start_message(200, headers))
            await client.send(body_message(fmt.event(openai_wire.ROLE_DELTA), more=True))
        tail = fmt.event({}, finish)
        if self.chat.include_usage:
            tail += fmt.usage(openai_usage(usage))
        await client.send(body_message(tail + openai_wire.SSE_DONE, more=False))


async def _pumped(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``chunks``, read by a task of their own, so that closing this iterator cancels that task
    where it waits: inside the model call that makes the next chunk.

    Closing ``chunks`` itself would only close the outermost generator: LangChain's
    ``astream`` and the mixture's graph stream inside it are left to the garbage collector,
    with their upstream calls running (8 of 100 aggregator streams outlived their clients in a
    probe). A cancelled task unwinds every frame it is in, down to the HTTP read.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()  # never full: the pump never waits

    async def pump() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(("chunk", chunk))
        except Exception as exc:
            queue.put_nowait(("error", exc))
        else:
            queue.put_nowait(("end", None))

    task = asyncio.create_task(pump())
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _aclose(chunks)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator early, so an abandoned run is cancelled at once."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def create_app(
    moa: ChatMixtureOfAgents,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULTS.max_body_bytes,
    body_timeout: float = DEFAULTS.body_timeout,
    checkpoint: str | None = DEFAULTS.checkpoint,
    lease_seconds: float = DEFAULTS.lease_seconds,
    max_json_depth: int = DEFAULTS.max_json_depth,
    max_messages: int = DEFAULTS.max_messages,
    max_message_calls: int = DEFAULTS.max_message_calls,
    max_head_bytes: int = DEFAULTS.max_head_bytes,
    playground: bool = DEFAULTS.playground,
) -> Starlette:
    """The OpenAI-compatible Starlette app serving ``moa``, to mount in your own ASGI stack.

    Args:
        moa: The mixture to serve.
        model_name: The served model id (default ``moa.model_name``); requests must name it.
        api_key: If given, every request needs ``Authorization: Bearer <api_key>``, checked
            before any byte of the body is read.
        max_body_bytes: Larger request bodies are refused with 413.
        body_timeout: Seconds a client has to send its body (then 408).
        checkpoint: Where runs of requests carrying an ``Idempotency-Key`` are kept (a
            ``moa_graph.checkpoints`` URL); without it the header is ignored (and listed in
            ``X-MoA-Ignored-Params``).
        lease_seconds: How long the key of a run whose worker died stays locked (409).
        playground: Serve the playground page at ``/`` (the run-event stream it reads,
            ``POST /v1/moa/runs``, is served either way).
        max_json_depth: Deeper JSON in a request body is refused with 400.
        max_messages: More messages in a request are refused with 400.
        max_message_calls: A request whose messages times the run's model calls is over
            this is refused with 400 (each model call converts every message).
        max_head_bytes: Longer request heads are refused with 431.

    Example:
        >>> from moa_graph.presets import local_tiny
        >>> app = create_app(local_tiny().chat_model(), model_name="moa", api_key="k")
        >>> [route.path for route in app.routes]  # doctest: +NORMALIZE_WHITESPACE
        ['/v1/chat/completions', '/v1/models', '/chat/completions', '/models', '/v1/moa/runs',
         '/', '/playground/{name}']
    """
    endpoints = _Endpoints(
        moa,
        model_name=model_name,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        checkpoint=checkpoint,
        lease_seconds=lease_seconds,
        max_json_depth=max_json_depth,
        max_messages=max_messages,
        max_message_calls=max_message_calls,
        max_head_bytes=max_head_bytes,
        playground=playground,
    )
    return endpoints.app()


class MoAServer(UvicornServer):
    """A ``ChatMixtureOfAgents`` behind OpenAI's chat-completions API, on a uvicorn thread.

    Use :meth:`start`/:meth:`stop` (or ``with``) to run it on a daemon thread, e.g. in tests,
    or :meth:`serve_forever` to serve on the current thread until SIGINT/SIGTERM.

    Args:
        moa: The mixture to serve.
        host: Interface to bind; keep the loopback default unless you set ``api_key``.
        port: TCP port; 0 picks a free one (see :attr:`port` after starting).
        model_name: The served model id (default ``moa.model_name``); requests must name it.
        api_key: If given, every request needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: Larger request bodies are refused with 413.
        body_timeout: Seconds a client has to send its body (then 408).
        timeout_keep_alive: Seconds an idle keep-alive connection stays open.
        checkpoint: Where runs of requests carrying an ``Idempotency-Key`` are kept.
        lease_seconds: How long the key of a run whose worker died stays locked (409).
        playground: Serve the playground page at ``/``.
        **limits: The other limits of ``ServeOptions``: ``max_json_depth``,
            ``max_messages``, ``max_message_calls``, ``max_head_bytes`` (see
            :func:`create_app`), ``max_connections`` and ``head_timeout``.

    Example:
        >>> import openai
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> def fake(text):
        ...     return GenericFakeChatModel(messages=iter([AIMessage(text)] * 4))
        >>> moa = ChatMixtureOfAgents(proposers=[fake("4"), fake("four")],
        ...                           aggregator=fake("2 + 2 = 4"), layers=2)
        >>> with MoAServer(moa, model_name="moa") as server:
        ...     client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...     reply = client.chat.completions.create(
        ...         model="moa", messages=[{"role": "user", "content": "What is 2 + 2?"}])
        >>> reply.choices[0].message.content
        '2 + 2 = 4'
    """

    thread_name = "moa-openai-server"
    stop_timeout = 10.0

    def __init__(
        self,
        moa: ChatMixtureOfAgents,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        api_key: str | None = None,
        max_body_bytes: int = DEFAULTS.max_body_bytes,
        body_timeout: float = DEFAULTS.body_timeout,
        timeout_keep_alive: int = DEFAULTS.timeout_keep_alive,
        checkpoint: str | None = DEFAULTS.checkpoint,
        lease_seconds: float = DEFAULTS.lease_seconds,
        playground: bool = DEFAULTS.playground,
        **limits: Any,
    ) -> None:
        check_known(limits, [*REQUEST_LIMITS, *CONNECTION_LIMITS], what="server option")
        opts = dataclasses.replace(DEFAULTS, **limits)
        self._endpoints = _Endpoints(
            moa,
            model_name=model_name,
            api_key=api_key,
            max_body_bytes=max_body_bytes,
            body_timeout=body_timeout,
            checkpoint=checkpoint,
            lease_seconds=lease_seconds,
            **{name: getattr(opts, name) for name in REQUEST_LIMITS},
            playground=playground,
        )
        super().__init__(
            self._endpoints.app(),
            host,
            port,
            timeout_keep_alive=timeout_keep_alive,
            http=guarded_protocol(opts.max_connections, opts.head_timeout),
            max_head_bytes=opts.max_head_bytes,
        )

    @property
    def moa(self) -> ChatMixtureOfAgents:
        """The served mixture (may be replaced while serving)."""
        return self._endpoints.moa

    @moa.setter
    def moa(self, moa: ChatMixtureOfAgents) -> None:
        self._endpoints.moa = moa

    @property
    def model_name(self) -> str:
        """The served model id."""
        return self._endpoints.model_name

    def serve_forever(self) -> None:
        """Serve on the current thread until SIGINT or SIGTERM."""

        def announce() -> None:
            print(f"serving {self.model_name!r} at {self.base_url} (Ctrl-C stops)", file=sys.stderr)

        self.serve_until_signal(on_start=announce)


def app_from_environment() -> Starlette:
    """The app of one ``serve`` worker process: it builds the mixture :data:`SERVE_ENV` describes.

    uvicorn calls it in each worker (``factory=True``); the API key comes from
    :data:`API_KEY_ENV`.
    """
    settings = json.loads(os.environ[SERVE_ENV])
    return create_app(
        mixture_from_source(settings["mixture"]),
        model_name=settings["model_name"],
        api_key=os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=settings["max_body_bytes"],
        body_timeout=settings["body_timeout"],
        checkpoint=settings["checkpoint"],
        lease_seconds=settings["lease_seconds"],
        **{name: settings[name] for name in REQUEST_LIMITS},
        playground=settings["playground"],
    )


def serve(
    mixture: ChatMixtureOfAgents | MixtureSource,
    *,
    api_key: str | None = None,
    **options: Any,
) -> None:
    """Serve a mixture as an OpenAI-compatible API with uvicorn until SIGINT or SIGTERM.

    Args:
        mixture: The mixture, or its description (needed for ``workers > 1``: each worker
            process builds its own from it).
        api_key: Require ``Authorization: Bearer <api_key>`` on every request. With workers it
            reaches them as the ``MOA_GRAPH_API_KEY`` environment variable.
        **options: ``ServeOptions`` (``host``, ``port``, ``model_name``, ``workers``,
            ``checkpoint``, ``lease_seconds``, ``max_body_bytes``, ``body_timeout``,
            ``timeout_keep_alive``, ``playground`` and the limits: ``max_head_bytes``,
            ``max_connections``, ``head_timeout``, ``max_json_depth``, ``max_messages``,
            ``max_message_calls``).

    Raises:
        ValueError: For ``workers > 1`` with a built mixture, a bad description or option.

    Example:
        >>> source: MixtureSource = {"preset": "local-tiny", "overrides": {"temperature": 0.2}}
        >>> json.loads(json.dumps(source)) == source  # what the workers receive
        True
        >>> serve(source, port=8000, workers=2)  # doctest: +SKIP
        serving the mixture at http://127.0.0.1:8000/v1 with 2 workers (Ctrl-C stops)
    """
    check_known(options, [f.name for f in fields(ServeOptions)], what="server option")
    opts = ServeOptions(**options)
    if api_key is None and opts.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s without an api_key: anyone who reaches it can spend", opts.host
        )
    model_name = opts.model_name
    app: Starlette | str
    if opts.workers > 1:
        if isinstance(mixture, ChatMixtureOfAgents):
            raise ValueError("workers > 1 need the mixture's description: each builds its own")
        settings = {
            "mixture": mixture,
            "model_name": model_name,
            "max_body_bytes": opts.max_body_bytes,
            "body_timeout": opts.body_timeout,
            "checkpoint": opts.checkpoint,
            "lease_seconds": opts.lease_seconds,
            "playground": opts.playground,
            **{name: getattr(opts, name) for name in REQUEST_LIMITS},
        }
        os.environ[SERVE_ENV] = json.dumps(settings)
        if api_key:
            os.environ[API_KEY_ENV] = api_key
        else:
            os.environ.pop(API_KEY_ENV, None)
        app = APP_FACTORY
    else:
        moa = mixture if isinstance(mixture, ChatMixtureOfAgents) else mixture_from_source(mixture)
        model_name = model_name or moa.model_name
        app = create_app(
            moa,
            model_name=model_name,
            api_key=api_key,
            max_body_bytes=opts.max_body_bytes,
            body_timeout=opts.body_timeout,
            checkpoint=opts.checkpoint,
            lease_seconds=opts.lease_seconds,
            **{name: getattr(opts, name) for name in REQUEST_LIMITS},
            playground=opts.playground,
        )
    raise_file_limit(opts.max_connections)
    name = repr(model_name) if model_name else "the mixture"
    url = http_url(opts.host, opts.port) + "/v1"
    plural = "s" if opts.workers > 1 else ""
    print(f"serving {name} at {url} with {opts.workers} worker{plural} (Ctrl-C stops)",
          file=sys.stderr)  # fmt: skip
    uvicorn.run(
        app,
        factory=opts.workers > 1,
        host=opts.host,
        port=opts.port,
        workers=opts.workers,
        # h11 with Nagle off, a cap on connections and a head deadline, in workers too
        http=guarded_protocol(opts.max_connections, opts.head_timeout),
        ws="none",
        lifespan="auto",
        timeout_keep_alive=opts.timeout_keep_alive,
        h11_max_incomplete_event_size=opts.max_head_bytes,
        log_config=log_config(),  # repeated lines limited, no query string in the access log
    )


def raise_file_limit(max_connections: int) -> None:
    """Raise this process's open-file limit to its hard limit, and warn if it is still too low
    for ``max_connections`` (each also takes upstream connections while its run lasts)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = 2 * max_connections + 100
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "the open-file limit (%d) is under 2 x --max-connections + 100 (%d): lower "
            "--max-connections or raise the limit (ulimit -n)",
            soft,
            needed,
        )
