"""Serve a mixture as an OpenAI-compatible endpoint: ``/v1/chat/completions`` and ``/v1/models``.

Any OpenAI client or tool can then use the mixture like one model: answers stream token by token
as the aggregator writes them, and ``usage`` sums every call of the run. The server is
dependency-free (asyncio streams, reusing the HTTP/SSE plumbing of ``moa_graph.testing``); what a
request may change is described in ``moa_graph.serve.openai_requests``.

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
import hmac
import logging
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from moa_graph import http_messages
from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.errors import MoAError
from moa_graph.loop_server import LoopServer
from moa_graph.redact import redact
from moa_graph.serve import openai_wire
from moa_graph.serve.openai_requests import (
    ChatRequest,
    RequestError,
    error_body,
    finish_reason,
    openai_usage,
    parse_chat_request,
)

logger = logging.getLogger(__name__)

_DISCONNECT_POLL_S = 0.1
"""How often a running request looks for a client that went away (its run is then cancelled)."""


class MoAServer(LoopServer):
    """A ``ChatMixtureOfAgents`` behind OpenAI's chat-completions API.

    Use :meth:`start`/:meth:`stop` (or ``with``) to run it on a daemon thread, e.g. in tests,
    or :meth:`serve_forever` to serve on the current thread until SIGINT/SIGTERM.

    Args:
        moa: The mixture to serve.
        host: Interface to bind; keep the loopback default unless you set ``api_key``.
        port: TCP port; 0 picks a free one (see :attr:`port` after starting).
        model_name: The served model id (default ``moa.model_name``); requests must name it.
        api_key: If given, every request needs ``Authorization: Bearer <api_key>``.

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
    ) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key: give a non-empty key, or None for no authentication")
        self.moa = moa
        super().__init__(host, port)
        self.model_name = model_name or moa.model_name
        self._api_key = api_key
        self._secrets = tuple(s for s in (api_key, *moa.plan.secrets) if s)

    def serve_forever(self) -> None:
        """Serve on the current thread until SIGINT or SIGTERM."""
        asyncio.run(self._serve_until_signal())

    async def _serve_until_signal(self) -> None:
        await self._open()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        print(f"serving {self.model_name!r} at {self.base_url} (Ctrl-C stops)", file=sys.stderr)
        try:
            await stop.wait()
        finally:
            await self._close()

    # -- HTTP ----------------------------------------------------------------------------------

    def _reject(self, writer: asyncio.StreamWriter, message: str) -> None:
        _send(writer, RequestError(400, message), keep=False)

    async def _dispatch(
        self,
        request: http_messages.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; return whether the connection may be reused."""
        keep = request.keep_alive
        path = request.path.rstrip("/")
        routes: dict[str, tuple[str, Callable[[], Awaitable[bool]]]] = {
            "/v1/chat/completions": ("POST", lambda: self._chat(request, reader, writer)),
            "/v1/models": ("GET", lambda: self._models(writer, keep)),
        }
        route = routes.get(path) or routes.get("/v1" + path)
        if route is None:
            return _send(writer, RequestError(404, f"No route for {request.method} {path}."), keep)
        method, handler = route
        if request.method != method:
            return _send(writer, RequestError(405, f"Use {method} for {path}."), keep)
        if not self._authorized(request):
            return _send(writer, _UNAUTHORIZED, keep, headers=[("WWW-Authenticate", "Bearer")])
        return await handler()

    def _authorized(self, request: http_messages.Request) -> bool:
        if self._api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._api_key.encode())

    async def _models(self, writer: asyncio.StreamWriter, keep: bool) -> bool:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "moa-graph"}
        writer.write(
            http_messages.json_response(200, {"object": "list", "data": [model]}, keep_alive=keep)
        )
        return keep

    # -- chat completions ----------------------------------------------------------------------

    async def _chat(
        self,
        request: http_messages.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        keep = request.keep_alive
        try:
            chat = parse_chat_request(
                request.body, served_name=self.model_name, max_input_chars=self.moa.max_input_chars
            )
        except RequestError as exc:
            return _send(writer, exc, keep)
        headers = [("X-MoA-Ignored-Params", ",".join(chat.ignored))] if chat.ignored else []
        exchange = _Exchange(self, chat, writer, keep, headers)
        run = exchange.stream() if chat.stream else exchange.complete()
        return await _unless_disconnected(reader, run)

    def run_error(self, exc: BaseException) -> RequestError:
        """A failed run as an error response: 502 for a mixture failure, else 500; redacted."""
        text = redact(f"{type(exc).__name__}: {exc}", self._secrets)
        if isinstance(exc, MoAError):
            logger.warning("mixture run failed: %s", text)
            return RequestError(502, text, type_="server_error", code="mixture_failed")
        logger.error("mixture run crashed: %s", text)
        return RequestError(500, text, type_="server_error", code="internal_error")


_UNAUTHORIZED = RequestError(
    401,
    "Incorrect or missing API key: send Authorization: Bearer <key>.",
    code="invalid_api_key",
)


class _Exchange:
    """One chat-completion request being answered."""

    def __init__(
        self,
        server: MoAServer,
        chat: ChatRequest,
        writer: asyncio.StreamWriter,
        keep: bool,
        headers: list[tuple[str, str]],
    ) -> None:
        self.server, self.chat, self.writer, self.keep = server, chat, writer, keep
        self.headers = headers
        self.cid = f"chatcmpl-moa{secrets.token_hex(12)}"
        self.created = int(time.time())

    async def complete(self) -> bool:
        """Answer with one ``chat.completion`` object."""
        moa = self.server.moa
        try:
            answer = await moa.ainvoke(self.chat.messages, stop=self.chat.stop)
        except Exception as exc:
            return _send(self.writer, self.server.run_error(exc), self.keep, headers=self.headers)
        body = openai_wire.completion_body(
            self.cid,
            self.server.model_name,
            self.created,
            answer.text,
            finish_reason(answer.response_metadata),
            openai_usage(getattr(answer, "usage_metadata", None)),
        )
        self.writer.write(
            http_messages.json_response(200, body, keep_alive=self.keep, headers=self.headers)
        )
        return self.keep

    async def stream(self) -> bool:
        """Answer with server-sent ``chat.completion.chunk`` events as the aggregator writes.

        The response head is sent with the first token, so a run that fails before any token
        (e.g. every proposer failed) is a plain HTTP error; a failure after it is an SSE
        ``{"error": ...}`` event, which OpenAI clients raise as ``APIError``.
        """
        fmt = openai_wire.ChunkFormatter(
            self.cid, self.server.model_name, self.created, 1, self.chat.include_usage
        )
        started = False
        usage, finish = None, "stop"
        chunks = self.server.moa.astream(self.chat.messages, stop=self.chat.stop)
        try:
            async for chunk in chunks:
                if chunk.usage_metadata:
                    usage = chunk.usage_metadata
                if chunk.chunk_position == "last":
                    finish = finish_reason(chunk.response_metadata)
                if not chunk.text:
                    continue
                if not started:
                    self.writer.write(self._head(fmt))
                    started = True
                self.writer.write(fmt.content(chunk.text))
                await self.writer.drain()
        except ConnectionError:
            raise  # the client went away: nothing to answer
        except Exception as exc:
            error = self.server.run_error(exc)
            if not started:
                return _send(self.writer, error, self.keep, headers=self.headers)
            self.writer.write(
                openai_wire.sse(openai_wire.dumps(error.body())) + openai_wire.SSE_DONE
            )
            return False
        finally:
            await _aclose(chunks)
        tail = b"" if started else self._head(fmt)
        tail += fmt.event({}, finish)
        if self.chat.include_usage:
            tail += fmt.usage(openai_usage(usage))
        self.writer.write(tail + openai_wire.SSE_DONE)
        return self.keep

    def _head(self, fmt: openai_wire.ChunkFormatter) -> bytes:
        head = http_messages.head_bytes(
            200, [*openai_wire.SSE_HEADERS, *self.headers], keep_alive=self.keep
        )
        return head + fmt.event(openai_wire.ROLE_DELTA)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator early, so an abandoned run is cancelled at once."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _unless_disconnected(reader: asyncio.StreamReader, run: Awaitable[bool]) -> bool:
    """Await ``run``, cancelling it (and its paid model calls) if the client goes away."""
    task = asyncio.ensure_future(run)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if not task.done() and reader.at_eof():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return False
        return task.result()
    finally:
        if not task.done():
            task.cancel()


def _send(
    writer: asyncio.StreamWriter,
    error: RequestError,
    keep: bool,
    headers: list[tuple[str, str]] | None = None,
) -> bool:
    body = error_body(error.message, error.type, error.code, error.param)
    writer.write(
        http_messages.json_response(error.status, body, keep_alive=keep, headers=headers or ())
    )
    return keep


def serve(
    moa: ChatMixtureOfAgents,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    api_key: str | None = None,
) -> None:
    """Serve ``moa`` as an OpenAI-compatible API until SIGINT or SIGTERM.

    Args:
        moa: The mixture to serve.
        host: Interface to bind (loopback by default; set ``api_key`` before exposing it).
        port: TCP port.
        model_name: The served model id (default ``moa.model_name``).
        api_key: Require ``Authorization: Bearer <api_key>`` on every request.

    Example:
        >>> from moa_graph.presets import local_tiny
        >>> serve(local_tiny().chat_model(), port=8000)  # doctest: +SKIP
        serving 'moa:smollm2-135m' at http://127.0.0.1:8000/v1 (Ctrl-C stops)
    """
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an api_key: anyone who reaches it can spend", host)
    MoAServer(moa, host=host, port=port, model_name=model_name, api_key=api_key).serve_forever()
