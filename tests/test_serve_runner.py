"""``moa_graph.serve.runner``: uvicorn on a thread, as both servers use it."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moa_graph.serve.runner import UvicornServer


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
