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


async def _refuse_ambiguous_framing(send: Send) -> None:
    error = RequestError(400, "Send either Content-Length or Transfer-Encoding, not both.")
    body = dumps(error.body())
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start = start_message(400, headers)
    start["headers"].append(CLOSE)
    await send(start)
    await send(body_message(body, more=False))
