"""A small asyncio server that runs on its own daemon thread (the test server and ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any, Self

from moa_graph import http_messages


class HTTPAddress:
    """``port``, ``url`` and ``base_url`` of a server listening on ``host``."""

    host: str = "127.0.0.1"
    _port: int = 0

    @property
    def port(self) -> int:
        """The bound port (after starting)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: the ``base_url`` of an OpenAI client."""
        return self.url + "/v1"


class LoopServer(HTTPAddress):
    """A TCP server whose connections ``_handle_connection`` serves, on a daemon thread's loop.

    ``start()`` binds the port (``port=0`` picks a free one) and returns once listening, or
    re-raises the bind error; ``stop()`` closes the listener and cancels open connections.
    Subclasses track each connection's task in ``_connections``.
    """

    thread_name = "moa-loop-server"
    stop_timeout = 5.0
    backlog = 1024

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.connections_accepted = 0
        """Total TCP connections accepted (shows keep-alive reuse)."""

    async def _dispatch(
        self,
        request: http_messages.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; return whether the connection may be reused."""
        raise NotImplementedError

    def _reject(self, writer: asyncio.StreamWriter, message: str) -> None:
        """Answer a request that could not be parsed (the connection is closed after it)."""
        raise NotImplementedError

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one connection: its requests one after another while it is kept alive."""
        self.connections_accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            keep_alive = True
            while keep_alive:
                try:
                    request = await http_messages.read_request(reader, writer)
                except http_messages.BadRequest as exc:
                    self._reject(writer, str(exc))
                    break
                if request is None:
                    break
                keep_alive = await self._dispatch(request, reader, writer) and request.keep_alive
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            # The client went away, or the server is shutting down: finishing normally keeps
            # asyncio from logging the cancellation as an unhandled error (3.11 streams).
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self._port, backlog=self.backlog
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def start(self) -> Self:
        """Serve on a daemon thread with its own event loop; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                errors.append(exc)
                loop.close()
                return
            finally:
                ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread = None
            raise errors[0]
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving: open connections are dropped."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(self.stop_timeout if timeout is None else timeout)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
