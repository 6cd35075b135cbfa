"""What a public server must check that uvicorn leaves to the application.

uvicorn with h11 refuses malformed framing itself (400 for conflicting or non-numeric
``Content-Length``, unknown ``Transfer-Encoding``, bad chunk sizes, request heads over 16 KiB),
and closes idle keep-alive connections. The application still has to:

- bound the request body in size and in time: :func:`read_body` (413 and 408);
- refuse a request framed both ways, ``Content-Length`` and ``Transfer-Encoding``: h11 reads
  it as chunked and keeps the connection, which a proxy in front that trusts
  ``Content-Length`` would read differently (request smuggling); :class:`FramingGuard` answers
  400 and closes;
- close the connection after answering a request whose body it did not read (401, 413, 408,
  or a body sent along a ``GET``): otherwise uvicorn keeps reading and discarding that body,
  and every byte of it, however slow, re-arms the keep-alive timer. :class:`FramingGuard`
  adds ``Connection: close`` to such responses.

Example:
    >>> from starlette.applications import Starlette
    >>> from starlette.middleware import Middleware
    >>> app = Starlette(middleware=[Middleware(FramingGuard)])
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moa_graph.serve.asgi import body_message, start_message
from moa_graph.serve.openai_requests import RequestError
from moa_graph.serve.openai_wire import dumps

CLOSE = (b"connection", b"close")


async def read_body(request: Request, *, max_bytes: int, timeout: float) -> bytes:
    """The request body, at most ``max_bytes`` long and read within ``timeout`` seconds.

    A declared ``Content-Length`` over the limit is refused before any byte is read; a chunked
    body as soon as it passes the limit.

    Raises:
        RequestError: 413 for a body over ``max_bytes``, 408 for one not read in time, 400 for
            a client that left before sending it all.

    Example:
        >>> async def receive():
        ...     return {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
        >>> request = Request({"type": "http", "headers": [(b"content-length", b"8")]}, receive)
        >>> asyncio.run(read_body(request, max_bytes=100, timeout=1.0))
        b'{"a": 1}'
        >>> asyncio.run(read_body(request, max_bytes=4, timeout=1.0))
        Traceback (most recent call last):
        ...
        moa_graph.serve.openai_requests.RequestError: The request body is larger than this \
server accepts (4 bytes).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for part in request.stream():
                size += len(part)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                parts.append(part)
    except TimeoutError:
        raise RequestError(
            408, f"The request body was not received within {timeout:g} s.", code="timeout"
        ) from None
    except ClientDisconnect:
        raise RequestError(400, "The client left before sending its whole body.") from None
    return b"".join(parts)


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(
        413,
        f"The request body is larger than this server accepts ({max_bytes} bytes).",
        code="request_too_large",
    )


class FramingGuard:
    """ASGI middleware: refuses requests framed both ways, and closes after unread bodies.

    Args:
        app: The application it guards.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in scope["headers"]}
        if b"transfer-encoding" in names and b"content-length" in names:
            await _refuse_ambiguous_framing(send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        unread = b"transfer-encoding" in names or length not in (b"", b"0")

        async def receive_body() -> Message:
            nonlocal unread
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                unread = False
            return message

        async def send_closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, receive_body, send_closing_if_unread)


def head_size(scope: Scope) -> int:
    """The bytes of a request's head: its request line and headers, as sent.

    Example:
        >>> head_size({"method": "GET", "raw_path": b"/v1/models", "query_string": b"",
        ...            "headers": [(b"host", b"x")]})
        36
    """
    query = scope.get("query_string", b"")
    line = len(scope["method"]) + len(scope.get("raw_path", b"")) + len(query) + bool(query) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


class HeadGuard:
    """ASGI middleware: refuses heads over ``max_head_bytes`` (431) and HTTP versions other
    than 1.x (505), and closes the connection after either.

    h11 bounds only a head that is still incomplete (16 KiB by default): one that arrives
    complete in a single read may be any length (10,000 headers, 119 KB, were served), and it
    reads ``HTTP/2.0`` or ``HTTP/9.9`` request lines as HTTP/1.1. uvicorn has no setting for
    either, so the check is here, before the app sees the request. A later 1.x minor version
    is served as HTTP/1.1, as RFC 9110 (2.5) asks.

    Args:
        app: The application it guards.
        max_head_bytes: The longest request head accepted, request line and headers.
    """

    def __init__(self, app: ASGIApp, max_head_bytes: int) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not str(scope.get("http_version")).startswith("1."):
                message = f"HTTP/{scope.get('http_version')} is not supported; use HTTP/1.1."
                await _refuse(send, RequestError(505, message, code="http_version_not_supported"))
                return
            if (size := head_size(scope)) > self.max_head_bytes:
                message = (
                    f"The request head has {size:,} bytes, more than this server accepts "
                    f"({self.max_head_bytes:,})."
                )
                await _refuse(send, RequestError(431, message, code="request_head_too_large"))
                return
        await self.app(scope, receive, send)


async def _refuse_ambiguous_framing(send: Send) -> None:
    error = RequestError(400, "Send either Content-Length or Transfer-Encoding, not both.")
    await _refuse(send, error)


async def _refuse(send: Send, error: RequestError) -> None:
    """Answer ``error`` and close the connection (nothing of the request was read)."""
    body = dumps(error.body())
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start = start_message(error.status, headers)
    start["headers"].append(CLOSE)
    await send(start)
    await send(body_message(body, more=False))
