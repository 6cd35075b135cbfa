"""``moa_graph.serve.runner``: uvicorn on a thread, as both servers use it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moa_graph.serve.runner import NoDelayH11Protocol, UvicornServer, no_delay


def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", hello)])


def test_start_raises_the_bind_error_of_a_taken_port() -> None:
    with UvicornServer(APP) as first:
        second = UvicornServer(APP, port=first.port)
        with pytest.raises(OSError):
            second.start()
        assert urllib.request.urlopen(first.url, timeout=5).read() == b"hello"


def test_serve_until_signal_off_the_main_thread_stops_when_told() -> None:
    server = UvicornServer(APP)
    until = threading.Event()
    started = threading.Event()
    thread = threading.Thread(
        target=server.serve_until_signal, kwargs={"until": until, "on_start": started.set}
    )
    thread.start()
    try:
        assert started.wait(10)
        assert urllib.request.urlopen(server.url, timeout=5).read() == b"hello"
        until.set()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        until.set()
    time.sleep(0.1)
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(server.url, timeout=5)


def test_connections_send_without_waiting_for_acks() -> None:
    """Nagle's algorithm is off on accepted connections: with it on, a response's body waited
    for the client's delayed ACK of its head (about 40 ms on every non-streamed answer)."""
    with UvicornServer(APP) as server, socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while not received.endswith(b"hello"):
            received += raw.recv(4096)
        (peer,) = [raw.getsockname()]
        transport = server.connections.transport_for({"client": peer})
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_worker_processes_turn_nagle_off_too() -> None:
    """``moa-graph serve --workers N`` hands uvicorn a listener bound without IPPROTO_TCP (its
    own), so its protocol turns Nagle off itself on each connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as uvicorn binds
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

            class Transport(asyncio.Transport):
                def get_extra_info(self, name: str, default: object = None) -> object:
                    return accepted if name == "socket" else default

            no_delay(Transport())
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.fileno() >= 0
    assert issubclass(NoDelayH11Protocol, asyncio.Protocol)
