"""ASGI plumbing shared by ``moa-graph serve`` and the scripted test server.

Both answer a request long after reading it (a mixture run, a scripted latency), and both must
notice a client that goes away meanwhile: :class:`ClientWatch` does, and can cancel the work.
Both answer routing errors in OpenAI's error shape: :func:`routing_error`. Nothing here imports
LangChain (the test server runs in a lean child process).

Example:
    >>> raw_headers([("Content-Type", "text/event-stream")])
    [(b'content-type', b'text/event-stream')]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Self

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Send

from moa_graph.serve.openai_wire import error_body


def raw_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI wants them: lower-case names, latin-1 bytes."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def start_message(status: int, headers: Iterable[tuple[str, str]] = ()) -> Message:
    """The ``http.response.start`` message."""
    return {"type": "http.response.start", "status": status, "headers": raw_headers(headers)}


def body_message(data: bytes, *, more: bool) -> Message:
    """An ``http.response.body`` message; ``more=False`` ends the response."""
    return {"type": "http.response.body", "body": data, "more_body": more}


async def routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (404, 405) in OpenAI's error shape, for ``exception_handlers``."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 405:
        message = f"Use {(exc.headers or {}).get('Allow', 'another method')} for {path}."
    else:
        message = f"No route for {request.method} {path}."
    body = error_body(message, "invalid_request_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class ClientWatch:
    """Notices a client that goes away while its response is being made.

    Enter it once the request body has been read: from then on the next ASGI message is
    ``http.disconnect``, which the server also sends once the response is complete. So ``send``
    goes through the watch, which tells the two apart: :attr:`gone` means the client left first.

    Example:
        >>> async def receive():  # the client has gone
        ...     return {"type": "http.disconnect"}
        >>> async def send(message):
        ...     raise AssertionError("nothing is sent")
        >>> async def answer():
        ...     async with ClientWatch(receive, send) as client:
        ...         in_5_s = asyncio.get_running_loop().time() + 5
        ...         if await client.sleep_until(in_5_s):  # False at once: no one to answer
        ...             await client.send(start_message(204))
        ...         return client.gone
        >>> asyncio.run(answer())
        True
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.response_complete = False

    @property
    def gone(self) -> bool:
        """Whether the client disconnected before the response was complete."""
        return self._gone.is_set()

    async def send(self, message: Message) -> None:
        """Send an ASGI message to the client (nothing happens once it has gone)."""
        await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_complete = True

    async def wait_gone(self) -> None:
        """Wait until the client goes away (or the server drops the connection)."""
        await self._gone.wait()

    async def sleep_until(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (event-loop time); ``False`` if the client went away first."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0 and not self.gone:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), delay)
        return not self.gone

    async def run(self, work: Awaitable[None]) -> bool:
        """Await ``work``, cancelling it if the client goes away first.

        Returns:
            ``True`` if ``work`` finished, ``False`` if it was cancelled (its exceptions propagate).
        """
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()
        return True

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass  # the body was read already: nothing but the disconnect should come
        if not self.response_complete:
            self._gone.set()

    async def __aenter__(self) -> Self:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
