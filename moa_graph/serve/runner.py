"""Run an ASGI app with uvicorn on a daemon thread (tests, notebooks) or until SIGINT/SIGTERM.

:class:`UvicornServer` is the base of ``MoAServer`` and of the scripted test server:
``start()`` binds the port (``port=0`` picks a free one) and returns once uvicorn serves;
``stop()`` drops the open connections and stops; ``serve_until_signal()`` serves in the
foreground.
It counts the TCP connections it accepted and can reach each one's transport (see
:class:`Connections`). Only the standard library and uvicorn are imported (the test server runs
in a lean child process).

Example:
    >>> from starlette.applications import Starlette
    >>> from starlette.responses import PlainTextResponse
    >>> from starlette.routing import Route
    >>> import urllib.request
    >>> app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hi"))])
    >>> with UvicornServer(app) as server:
    ...     urllib.request.urlopen(server.url).read()
    b'hi'
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, cast

import uvicorn
from starlette.types import ASGIApp, Scope
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.h11_impl import H11Protocol

from moa_graph.serve.logs import log_config


def http_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 host in brackets.

    Example:
        >>> http_url("127.0.0.1", 8000), http_url("::1", 8000)
        ('http://127.0.0.1:8000', 'http://[::1]:8000')
    """
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HTTPAddress:
    """``port``, ``url`` and ``base_url`` of a server listening on ``host``; ``with server:``
    starts it and stops it."""

    host: str = "127.0.0.1"
    _port: int = 0

    @property
    def port(self) -> int:
        """The bound port (after starting)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return http_url(self.host, self._port)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: the ``base_url`` of an OpenAI client."""
        return self.url + "/v1"

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


Peer = tuple[str, int]


class Connections:
    """The TCP connections of one uvicorn server: counted, and open ones reachable by peer.

    uvicorn's ASGI interface has no public way to reach a connection's socket, which the test
    server needs to inject wire faults (a TCP reset, a response cut short) and ``stop()`` needs
    to drop open connections at once. uvicorn does let the caller choose its HTTP protocol
    class (``uvicorn.Config(http=...)``), so :meth:`protocol_factory` wraps uvicorn's own one in
    :class:`_TrackedProtocol`, which sees each transport come and go; an ASGI ``scope["client"]``
    is the transport's peer address, which finds it again.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self._open: dict[Peer, asyncio.BaseTransport] = {}

    def protocol_factory(
        self, http: str | Callable[..., asyncio.Protocol]
    ) -> Callable[..., asyncio.Protocol]:
        """A factory for ``uvicorn.Config(http=...)``: uvicorn's ``http`` protocol (a name or
        a protocol factory), tracked."""
        inner: Callable[..., asyncio.Protocol] = (
            import_from_string(HTTP_PROTOCOLS[http]) if isinstance(http, str) else http
        )

        def factory(**kwargs: Any) -> asyncio.Protocol:
            return _TrackedProtocol(inner(**kwargs), self)

        return factory

    def transport_for(self, scope: Scope) -> asyncio.BaseTransport:
        """The transport of the connection that carried the request of ``scope``.

        Raises:
            LookupError: If that connection is closed (or ``scope`` has no client).
        """
        client = scope.get("client")
        transport = self._open.get((client[0], client[1])) if client else None
        if transport is None:
            raise LookupError(f"no open connection from {client}")
        return transport

    def abort_all(self) -> None:
        """Close every open connection at once (their in-flight requests see a disconnect)."""
        for transport in list(self._open.values()):
            transport.abort()  # type: ignore[attr-defined]

    def _opened(self, peer: Peer | None, transport: asyncio.BaseTransport) -> None:
        self.accepted += 1
        if peer is not None:
            self._open[peer] = transport

    def _closed(self, peer: Peer | None) -> None:
        if peer is not None:
            self._open.pop(peer, None)


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection, so small writes leave at once.

    uvicorn's ``--workers N`` binds its listener without ``IPPROTO_TCP``, so asyncio leaves
    Nagle on for its connections and a response's body waits for the client's delayed ACK of
    its head, about 40 ms per answer on Linux (uvicorn issue #3149, open).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with Nagle off on each connection (see ``no_delay``); a class, so
    ``uvicorn.run(http=...)`` can hand it to worker processes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        super().connection_made(transport)


_FULL = (
    b'{"error": {"message": "Too many open connections; retry shortly.", "type": '
    b'"server_error", "param": null, "code": "too_many_connections"}}'
)
FULL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(_FULL), _FULL)
)
"""What a connection over the limit gets at once, before the server closes it."""


class GuardedH11Protocol(NoDelayH11Protocol):
    """uvicorn's h11 protocol (Nagle off) with a cap on open connections and a head deadline.

    uvicorn has neither: its ``limit_concurrency`` answers 503 only once a request arrives, so
    connections that never send a byte still pile up until the process runs out of file
    descriptors (asyncio then logs ``socket.accept() out of system resource`` in a loop), and
    its keep-alive timer starts only after a first response, so a client can take as long as it
    likes to send a head. Both are small additions to uvicorn's own protocol class, which is
    the one hook uvicorn gives (``Config(http=...)``); ``functools.partial`` sets them, and
    pickles to worker processes.

    Args:
        max_connections: Open connections of this process beyond which a new one gets
            :data:`FULL_RESPONSE` (503) and is closed at once; ``None``: no cap.
        head_timeout: Seconds a client has, from connecting or from the end of the last
            response, to send a request's whole head; then the connection is closed.
            ``None``: no deadline.
        **kwargs: uvicorn's (``config``, ``server_state``, ...).
    """

    def __init__(
        self, *, max_connections: int | None = None, head_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.logger.warning(
                "Refusing connections over the limit of %d open ones (--max-connections).",
                self.max_connections,
            )
            transport.write(FULL_RESPONSE)
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's head has arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # the next head has its own deadline

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.head_timeout is not None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def reset_connection(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` abruptly so the peer sees a TCP RST (``SO_LINGER`` 0, then abort)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _TrackedProtocol(asyncio.Protocol):
    """Forwards every protocol event to uvicorn's protocol, telling :class:`Connections` too."""

    def __init__(self, inner: asyncio.Protocol, connections: Connections) -> None:
        self._inner = inner
        self._connections = connections
        self._peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        no_delay(transport)
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self._connections._opened(self._peer, transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections._closed(self._peer)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it serves and dropping open connections when it stops."""

    def __init__(self, config: uvicorn.Config, connections: Connections) -> None:
        super().__init__(config)
        self.connections = connections
        self.serving = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.serving.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Drop open connections first, as stop() promises: uvicorn would wait for in-flight
        # responses (a scripted hang: until its graceful-shutdown timeout).
        self.connections.abort_all()
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port=0``: a free one), for uvicorn to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # connections whose socket says TCP. With it on, a response's body waited for the client's
    # delayed ACK of its head: 44 ms added to every non-streamed answer (measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class UvicornServer(HTTPAddress):
    """An ASGI app served by uvicorn on a daemon thread with its own event loop.

    Args:
        app: The ASGI application.
        host: Interface to bind.
        port: TCP port; 0 picks a free one (see :attr:`port` after starting).
        timeout_keep_alive: Seconds an idle keep-alive connection stays open (uvicorn's).
        http: uvicorn's HTTP implementation (``"h11"``: strict parsing, bounded request heads),
            or a protocol factory (see :class:`GuardedH11Protocol`).
        max_head_bytes: h11's bound on a request head still incomplete (uvicorn's
            ``h11_max_incomplete_event_size``; ``None``: h11's 16 KiB).
    """

    thread_name = "moa-uvicorn"
    stop_timeout = 5.0
    backlog = 2048

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout_keep_alive: int = 5,
        http: str | Callable[..., asyncio.Protocol] = "h11",
        max_head_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.timeout_keep_alive = timeout_keep_alive
        self.http = http
        self.max_head_bytes = max_head_bytes
        self.connections = Connections()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def connections_accepted(self) -> int:
        """Total TCP connections accepted (shows keep-alive reuse)."""
        return self.connections.accepted

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            # uvicorn calls this with its protocol's keyword arguments, as it would the class
            http=cast(Any, self.connections.protocol_factory(self.http)),
            ws="none",
            lifespan="auto",
            log_config=log_config(access_log=False),
            log_level="warning",
            access_log=False,
            h11_max_incomplete_event_size=self.max_head_bytes,
            proxy_headers=False,  # scope["client"] must be the TCP peer (see Connections)
            backlog=self.backlog,
            timeout_keep_alive=self.timeout_keep_alive,
            timeout_graceful_shutdown=max(1, int(self.stop_timeout / 2)),
        )

    def start(self) -> Self:
        """Serve on a daemon thread; returns once serving, or raises the bind/startup error."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = bind_socket(self.host, self._port)
        self._port = sock.getsockname()[1]
        server = _Server(self._config(), self.connections)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # SystemExit too: uvicorn exits on startup failures
                errors.append(exc)
            finally:
                sock.close()
                server.serving.set()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        server.serving.wait()
        if errors or not server.started:
            self._thread.join(self.stop_timeout)
            self._thread = None
            cause = errors[0] if errors else None
            if cause is not None and not isinstance(cause, SystemExit):
                raise cause
            raise RuntimeError("uvicorn did not start (see its log)") from cause
        self._server = server
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving: open connections are dropped."""
        thread, server = self._thread, self._server
        if thread is None or server is None:
            return
        server.should_exit = True  # uvicorn's main loop checks it every 0.1 s
        thread.join(self.stop_timeout if timeout is None else timeout)
        self._thread = self._server = None

    def serve_until_signal(
        self, *, until: threading.Event | None = None, on_start: Callable[[], None] | None = None
    ) -> None:
        """Serve until SIGINT or SIGTERM (or until ``until`` is set), then stop.

        The calling thread waits while the server runs on its own, so a signal ends the wait
        and the process can exit normally (uvicorn's own handlers would re-raise the signal).
        Signals are handled only when called on the main thread.
        """
        stop = until or threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
            if on_start is not None:
                on_start()
            stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
