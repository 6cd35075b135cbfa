"""``moa-graph serve`` against hostile clients: raw sockets on 127.0.0.1, as an attacker would.

The server is the real one (uvicorn with h11, Starlette, the mixture behind it, whose models are
clients of a loopback scripted server) with small limits, so that oversized and slow requests
are quick to make.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_openai import ChatOpenAI

from moa_graph import ChatMixtureOfAgents
from moa_graph.cli.main import build_parser
from moa_graph.serve import openai_app
from moa_graph.serve.openai_app import MoAServer
from moa_graph.testing import ModelScript, OpenAICompatibleServer

KEY = "served-key-0123456789abcdef"
NAME = "moa-hardened"
ANSWER = "Paris, said the mixture."
MAX_BODY = 2000
BODY_TIMEOUT = 0.5
KEEP_ALIVE = 1
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {"p1": ModelScript(reply="Paris."), "agg": ModelScript(reply=ANSWER)}
    with OpenAICompatibleServer(scripts) as server:
        yield server


@pytest.fixture(scope="module")
def served(upstream: OpenAICompatibleServer) -> Iterator[MoAServer]:
    def remote(model: str) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=upstream.base_url, api_key="sk-up", max_retries=0)  # type: ignore[arg-type]

    moa = ChatMixtureOfAgents(proposers=[remote("p1")], aggregator=remote("agg"), layers=2)
    server = MoAServer(
        moa,
        model_name=NAME,
        api_key=KEY,
        max_body_bytes=MAX_BODY,
        body_timeout=BODY_TIMEOUT,
        timeout_keep_alive=KEEP_ALIVE,
    )
    with server:
        yield server


def assert_still_serves(server: MoAServer) -> None:
    """A well-behaved client still gets its answer."""
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Capital of France?"}]
        )
    assert reply.choices[0].message.content == ANSWER


class Raw:
    """A client on a bare socket: sends exactly the given bytes, reads what comes back."""

    def __init__(self, server: MoAServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names) and body."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._recv():
                raise ConnectionError(f"closed before a response: {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        if "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._exactly(size)
                self._line()
            self._line()
        else:  # delimited by the end of the connection
            while self._recv():
                pass
            body, self.buffer = self.buffer, b""
        return int(status_line.split()[1]), headers, body

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size and self._recv():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer and self._recv():
            pass
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection (EOF) within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                try:
                    if not self._recv():
                        return True
                except ConnectionResetError:
                    return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(served: MoAServer) -> Iterator[Raw]:
    client = Raw(served)
    yield client
    client.close()
    assert_still_serves(served)  # whatever the test did to it


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


AUTH = f"Authorization: Bearer {KEY}"
POST = "POST /v1/chat/completions HTTP/1.1"


def chat_body() -> bytes:
    return json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Hi?"}]}).encode()


# -------------------------------------------------------------------------- framing


@pytest.mark.parametrize(
    "request_bytes",
    [
        head(POST, "Host: x", AUTH, "Content-Length: 5", "Content-Length: 6") + b"hello",
        head(POST, "Host: x", AUTH, "Content-Length: -5") + b"hello",
        head(POST, "Host: x", AUTH, "Content-Length: 5x") + b"hello",
        head(POST, "Host: x", AUTH, "Content-Length: +5") + b"hello",
        head(POST, "Host: x", AUTH, "Transfer-Encoding: xchunked") + b"5\r\nhello\r\n0\r\n\r\n",
        head(POST, "Host: x", AUTH, "Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n",
        head(POST, "Host: x", AUTH, "Transfer-Encoding: chunked") + b"5\r\nhelloXX0\r\n\r\n",
        head(POST, "Host: x", AUTH, "Content-Length : 5") + b"hello",  # space before the colon
        head(POST, AUTH, "Content-Length: 5") + b"hello",  # HTTP/1.1 without Host
    ],
    ids=[
        "duplicate-content-length",
        "negative-content-length",
        "non-digit-content-length",
        "signed-content-length",
        "xchunked",
        "non-hex-chunk-size",
        "chunk-without-crlf",  # accepted before h11 0.16 (GHSA-vqfr-h8mv-ghfj)
        "space-before-colon",
        "no-host",
    ],
)
def test_malformed_framing_is_400_and_the_connection_closed(
    raw: Raw, upstream: OpenAICompatibleServer, request_bytes: bytes
) -> None:
    before = upstream.request_count()
    raw.send(request_bytes)
    status, headers, body = raw.response()
    assert status == 400
    assert headers["connection"] == "close"
    assert body == b"Invalid HTTP request received."  # uvicorn's own answer: h11 refused it
    assert raw.closed_within(5)
    assert upstream.request_count() == before


def test_request_head_growing_past_16_kib_is_400(raw: Raw) -> None:
    # h11 buffers at most 16 KiB of an incomplete head (a complete one that arrives in a single
    # read may be longer): a client cannot make the server hold an endless head.
    raw.send(f"{POST}\r\nHost: x\r\nX-Padding: ".encode() + b"a" * 20_000)
    status, headers, body = raw.response()
    assert (status, headers["connection"]) == (400, "close")
    assert body == b"Invalid HTTP request received."
    assert raw.closed_within(5)


def test_content_length_with_transfer_encoding_is_400_and_closed(
    raw: Raw, upstream: OpenAICompatibleServer
) -> None:
    # h11 alone would read this as chunked and keep the connection: a smuggling risk behind a
    # proxy that trusts Content-Length. The framing guard refuses it and closes.
    body = chat_body()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    before = upstream.request_count()
    raw.send(head(POST, "Host: x", AUTH, "Content-Length: 4", "Transfer-Encoding: chunked"))
    raw.send(chunked)
    status, headers, answer = raw.response()
    assert status == 400
    assert headers["connection"] == "close"
    assert "not both" in json.loads(answer)["error"]["message"]
    assert raw.closed_within(5)
    assert upstream.request_count() == before


def test_bare_lf_line_ends_are_read_as_crlf(raw: Raw) -> None:
    # h11 accepts a bare LF as a line end, as RFC 9112 (2.2) allows; the request is then read
    # like any other (here: refused for the missing key).
    raw.send(b"GET /v1/models HTTP/1.1\nHost: x\n\n")
    status, headers, _ = raw.response()
    assert (status, headers["www-authenticate"]) == (401, "Bearer")


# -------------------------------------------------------------------------- auth and body limits


@pytest.mark.parametrize("expect_continue", [False, True])
def test_unauthenticated_huge_body_is_401_before_any_byte_of_it(
    raw: Raw, upstream: OpenAICompatibleServer, expect_continue: bool
) -> None:
    before = upstream.request_count()
    lines = [POST, "Host: x", f"Content-Length: {10**9}", "Content-Type: application/json"]
    if expect_continue:
        lines.append("Expect: 100-continue")  # no "100 Continue": the body is not wanted
    raw.send(head(*lines))  # and not one byte of the body
    status, headers, body = raw.response()
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert headers["connection"] == "close"  # the server will not read the body either
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert raw.closed_within(5)
    assert upstream.request_count() == before


def test_wrong_key_is_401_too(raw: Raw) -> None:
    raw.send(head(POST, "Host: x", "Authorization: Bearer nope", "Content-Length: 5") + b"hello")
    status, _, body = raw.response()
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_declared_oversized_body_is_413_before_reading_it(raw: Raw) -> None:
    raw.send(head(POST, "Host: x", AUTH, f"Content-Length: {MAX_BODY + 1}"))
    status, headers, body = raw.response()
    assert status == 413
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and str(MAX_BODY) in error["message"]
    assert raw.closed_within(5)


def test_chunked_body_is_413_once_it_passes_the_limit(raw: Raw) -> None:
    raw.send(head(POST, "Host: x", AUTH, "Transfer-Encoding: chunked"))
    part = b"x" * (MAX_BODY // 2 + 1)
    raw.send(b"%x\r\n%s\r\n" % (len(part), part) * 2)  # no last chunk: the server stops first
    status, headers, body = raw.response()
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert raw.closed_within(5)


def test_chunked_body_within_the_limit_is_answered(raw: Raw) -> None:
    body = chat_body()
    raw.send(head(POST, "Host: x", AUTH, "Transfer-Encoding: chunked"))
    raw.send(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:]))
    status, headers, answer = raw.response()
    assert status == 200
    assert json.loads(answer)["choices"][0]["message"]["content"] == ANSWER
    assert "connection" not in headers  # kept alive
    raw.send(head("GET /v1/models HTTP/1.1", "Host: x", AUTH))
    assert raw.response()[0] == 200


def test_trickling_body_is_408_after_the_body_timeout(raw: Raw) -> None:
    raw.send(head(POST, "Host: x", AUTH, "Content-Length: 1000"))
    started = time.monotonic()
    while time.monotonic() - started < 10:
        try:
            raw.send(b"{")  # one byte every 50 ms: 1000 bytes would take 50 s
        except OSError:
            break
        if select.select([raw.sock], [], [], 0.05)[0]:
            break
    status, headers, body = raw.response()
    elapsed = time.monotonic() - started
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "timeout"
    assert BODY_TIMEOUT * 0.8 <= elapsed < 5
    assert raw.closed_within(5)


def test_body_sent_to_a_get_closes_the_connection_after_the_answer(raw: Raw) -> None:
    # Unread, the body would be read and discarded by uvicorn for as long as it trickles in.
    raw.send(head("GET /v1/models HTTP/1.1", "Host: x", AUTH, f"Content-Length: {10**9}"))
    status, headers, body = raw.response()
    assert status == 200 and json.loads(body)["data"][0]["id"] == NAME
    assert headers["connection"] == "close"
    assert raw.closed_within(5)


# -------------------------------------------------------------------------- idle connections


def test_idle_keep_alive_connection_is_closed_after_the_timeout(raw: Raw) -> None:
    raw.send(head("GET /v1/models HTTP/1.1", "Host: x", AUTH))
    assert raw.response()[0] == 200
    started = time.monotonic()
    assert raw.closed_within(KEEP_ALIVE + 5)
    assert time.monotonic() - started >= KEEP_ALIVE * 0.5


# A head not sent in time (silent, or a byte at a time) is cut at --head-timeout: see
# tests/test_serve_hostile.py, which runs a server with a short one.


# -------------------------------------------------------------------------- CLI and workers


def test_cli_defaults_are_the_servers() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.workers == 1
    assert args.max_body_bytes == openai_app.DEFAULTS.max_body_bytes == 8 * 1024 * 1024
    assert args.body_timeout == openai_app.DEFAULTS.body_timeout
    assert args.timeout_keep_alive == openai_app.DEFAULTS.timeout_keep_alive == 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_two_workers(upstream: OpenAICompatibleServer, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    model = f'base_url = "{upstream.base_url}", api_key = "sk-up"'
    recipe.write_text(
        f'proposers = [{{model = "openai:p1", {model}}}]\n'
        f'aggregator = {{model = "openai:agg", {model}}}\n'
        "layers = 2\n"
    )
    port = free_port()
    command = [sys.executable, "-c", "import sys; from moa_graph.cli import main; sys.exit(main())"]
    command += ["serve", "--config", str(recipe), "--port", str(port), "--workers", "2"]
    command += ["--model-name", NAME, "--max-body-bytes", str(MAX_BODY)]
    env = {**os.environ, "MOA_GRAPH_API_KEY": KEY}
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            answers = _ask_until_up(base_url, process)
            assert answers == [ANSWER] * 4
            wrong = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
            with wrong, pytest.raises(openai.AuthenticationError):
                wrong.models.list()  # the workers have the key from the environment
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        log = process.stderr.read() if process.stderr else ""
    workers = set(re.findall(r"Started server process \[(\d+)\]", log))
    assert len(workers) == 2, log
    assert str(process.pid) not in workers  # two worker processes besides the supervisor
    assert KEY not in log


def _ask_until_up(base_url: str, process: subprocess.Popen[str]) -> list[str]:
    """Four answers from the server, once it is up (the workers import LangChain first)."""
    deadline = time.monotonic() + 90
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=20) as client:
        while True:
            assert process.poll() is None, "moa-graph serve exited"
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        replies = [
            client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": f"Question {i}?"}]
            )
            for i in range(4)
        ]
    return [reply.choices[0].message.content or "" for reply in replies]
