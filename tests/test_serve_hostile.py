"""``moa-graph serve``'s second hostile probe (issue 28): each numbered probe, and the corpus.

Beside ``test_serve_hardening.py``: the real server (uvicorn with h11, Starlette, the mixture,
its models clients of the loopback scripted server), attacked over raw sockets with a valid
key unless said. Every test here failed on the code before the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI

from benchmarks.serve_probe import _chat, _request, _with_call, exchange, malformed_corpus
from moa_graph import ChatMixtureOfAgents
from moa_graph.engine.calls import CallPolicy, call_async
from moa_graph.redact import redact
from moa_graph.serve.logs import AccessQueryRedaction, RepeatLimit, log_config
from moa_graph.serve.openai_app import MoAServer, model_calls
from moa_graph.testing import FaultSpec, ModelScript, OpenAICompatibleServer
from moa_graph.testing.faults import Fault

NAME = "moa-probe"  # the corpus's model
KEY = "served-key-0123456789abcdef"  # the corpus's key
UPSTREAM_KEY = "sk-plan-0123456789abcdefghij3456"
ANSWER = "Paris, said the mixture."
HEAD_TIMEOUT = 1.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAICompatibleServer]:
    words = " ".join(f"w{i}" for i in range(200))
    scripts = {
        "p1": ModelScript(reply="Paris."),
        "agg": ModelScript(reply=ANSWER),
        "slow-agg": ModelScript(reply=words, ttft=0.05, per_token=0.05),
    }
    with OpenAICompatibleServer(scripts, record_messages=False) as server:
        yield server


def mixture(upstream: OpenAICompatibleServer, aggregator: str = "agg") -> ChatMixtureOfAgents:
    def remote(model: str) -> ChatOpenAI:
        return ChatOpenAI(
            model=model,
            base_url=upstream.base_url,
            api_key=UPSTREAM_KEY,  # type: ignore[arg-type]
            max_retries=0,
        )

    return ChatMixtureOfAgents(proposers=[remote("p1")], aggregator=remote(aggregator), layers=2)


@pytest.fixture(scope="module")
def served(upstream: OpenAICompatibleServer) -> Iterator[MoAServer]:
    """Default limits but a short head deadline, a small connection cap, and a conversion
    budget that binds before the message count (750 messages for the 2 calls of a run)."""
    server = MoAServer(
        mixture(upstream),
        model_name=NAME,
        api_key=KEY,
        head_timeout=HEAD_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
        max_message_calls=1500,
    )
    with server:
        yield server


class Records(logging.Handler):
    """Every record of the server's loggers (uvicorn's do not propagate to pytest's)."""

    NAMES = ("uvicorn", "asyncio", "moa_graph")  # uvicorn.error's lines reach uvicorn's

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(
            self.format(r) + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
            for r in self.records
        )


@pytest.fixture
def logs(served: MoAServer) -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in Records.NAMES]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def ask(server: MoAServer, data: bytes) -> tuple[int, dict[str, Any], bytes]:
    status, raw, _ = exchange(server.port, data)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_still_serves(server: MoAServer) -> None:
    status, _, body = ask(server, _request(_chat()))
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


# -------------------------------------------------------------------------- 1-3: malformed input


@pytest.mark.parametrize(
    "call",
    [
        {"function": {"name": "f", "arguments": "[1]"}},
        {"function": {"name": "f", "arguments": "1"}},
        {"function": {"name": 5, "arguments": "{}"}},
        {"id": {}, "function": {"name": "f", "arguments": "{}"}},
    ],
    ids=["arguments-array", "arguments-number", "name-number", "id-object"],
)
def test_malformed_tool_call_is_400_without_a_traceback(
    served: MoAServer, upstream: OpenAICompatibleServer, logs: Records, call: dict[str, Any]
) -> None:
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    messages = [{"role": "user", "content": "Hi"}, assistant, {"role": "user", "content": "?"}]
    before = upstream.request_count()
    status, _, body = ask(served, _request(_chat(messages)))
    assert status == 400, body
    assert error_of(body)["type"] == "invalid_request_error"
    assert "tool_calls[0]" in error_of(body)["message"]
    assert upstream.request_count() == before
    assert "Traceback" not in logs.text and not any(r.exc_info for r in logs.records)


@pytest.mark.parametrize("kind", ["[", '{"a":'])
def test_json_nested_100000_levels_is_400(served: MoAServer, logs: Records, kind: str) -> None:
    close = "]" if kind == "[" else "}"
    body = f'{{"model": "{NAME}", "messages": {kind * 100_000}1{close * 100_000}}}'
    status, _, answer = ask(served, _request(body))
    assert status == 400
    assert error_of(answer)["code"] == "too_deep"
    assert not any(r.exc_info for r in logs.records)


def test_nesting_under_the_parsers_limit_is_bounded_too(served: MoAServer) -> None:
    status, _, answer = ask(served, _request(_chat().replace('"Hi?"', "[" * 40 + "]" * 40)))
    assert status == 400 and "32 levels" in error_of(answer)["message"]


def test_deep_tool_call_arguments_are_400(served: MoAServer) -> None:
    call = {"function": {"name": "f", "arguments": "[" * 50_000 + "]" * 50_000}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    status, _, answer = ask(served, _request(_chat([assistant, {"role": "user", "content": "?"}])))
    assert status == 400 and error_of(answer)["code"] == "too_deep"


@pytest.mark.parametrize("text", ["a\\ud800b", "\\udfff", "\\udc00\\ud800"])
def test_lone_surrogate_is_400_before_any_model_call(
    served: MoAServer, upstream: OpenAICompatibleServer, text: str
) -> None:
    before = upstream.request_count()
    status, _, answer = ask(served, _request(_chat().replace("Hi?", text)))
    assert status == 400
    assert error_of(answer)["code"] == "invalid_unicode"
    assert upstream.request_count() == before


@pytest.mark.parametrize(
    "body",
    [
        _chat().replace("Hi?", "a\\ud800b"),
        f'{{"model": "{NAME}", "messages": {"[" * 100_000}{"]" * 100_000}}}',
        _chat([{"role": "user", "content": "a"}] * 100_000),
        _with_call({"function": {"name": 5, "arguments": "[1]"}}),
    ],
    ids=["lone-surrogate", "deep", "100000-messages", "bad-tool-call"],
)
def test_the_run_event_stream_refuses_the_same_input(
    served: MoAServer, upstream: OpenAICompatibleServer, logs: Records, body: str
) -> None:
    before = upstream.request_count()
    status, _, answer = ask(served, _request(body, path="/v1/moa/runs"))
    assert status == 400, answer
    assert error_of(answer)["type"] == "invalid_request_error"
    assert upstream.request_count() == before
    assert not any(r.exc_info for r in logs.records)


# -------------------------------------------------------------------------- 4: starvation


def test_100000_messages_are_refused_at_once(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    before = upstream.request_count()
    body = _chat([{"role": "user", "content": "a"}] * 100_000)
    started = time.monotonic()
    status, _, answer = ask(served, _request(body))
    assert status == 400
    assert error_of(answer)["code"] == "too_many_messages"
    assert "--max-messages" in error_of(answer)["message"]
    assert time.monotonic() - started < 5
    assert upstream.request_count() == before


def test_conversion_cost_is_bounded_by_messages_times_model_calls(served: MoAServer) -> None:
    calls = model_calls(served.moa)
    assert calls == 2
    budget = served._endpoints.max_message_calls
    too_many = [{"role": "user", "content": "a"}] * (budget // calls + 1)
    status, _, answer = ask(served, _request(_chat(too_many)))
    assert status == 400
    assert "--max-message-calls" in error_of(answer)["message"]


def test_models_answer_within_1_s_while_the_largest_acceptable_request_runs(
    served: MoAServer,
) -> None:
    endpoints = served._endpoints
    count = min(endpoints.max_messages, endpoints.max_message_calls // model_calls(served.moa))
    messages = [{"role": "user", "content": f"turn {i}"} for i in range(count)]
    done = threading.Event()
    statuses: list[int] = []

    def largest() -> None:
        statuses.append(ask(served, _request(_chat(messages)))[0])
        done.set()

    latencies = []
    worker = threading.Thread(target=largest)
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as client:
        worker.start()
        while not done.wait(0.02):
            started = time.monotonic()
            client.get(served.base_url + "/models").raise_for_status()
            latencies.append(time.monotonic() - started)
    worker.join()
    assert statuses == [200]
    assert latencies and max(latencies) < 1.0, sorted(latencies)[-5:]


# -------------------------------------------------------------------------- 5: connections


def test_connections_over_the_cap_get_503_and_are_closed(served: MoAServer, logs: Records) -> None:
    sockets = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(60)]
    try:
        time.sleep(0.3)
        refused = []
        for sock in sockets[MAX_CONNECTIONS:]:
            sock.settimeout(2)
            data = sock.recv(4096)
            refused.append(data.split(b"\r\n", 1)[0])
            assert sock.recv(10) == b""  # then closed
        # the cap counts this process's open connections: about 20 are over it
        assert len(refused) == 20 and set(refused) == {b"HTTP/1.1 503 Service Unavailable"}
    finally:
        for sock in sockets:
            sock.close()
    refusals = [r for r in logs.records if "over the limit" in r.getMessage()]
    assert 1 <= len(refusals) <= 10  # rate-limited
    time.sleep(0.2)
    assert_still_serves(served)


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/comp"], ids=["silent", "half-a-head"])
def test_a_head_not_sent_in_time_closes_the_connection(served: MoAServer, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(sent)
        sock.settimeout(HEAD_TIMEOUT + 5)
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert HEAD_TIMEOUT * 0.8 <= time.monotonic() - started < HEAD_TIMEOUT + 4


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline(served: MoAServer) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        started = time.monotonic()
        closed = False
        for byte in _request(_chat()):
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > HEAD_TIMEOUT + 4:
                break
        sock.settimeout(2)
        closed = closed or sock.recv(100) == b""
        assert closed and time.monotonic() - started < HEAD_TIMEOUT + 4


def test_the_next_head_on_a_kept_connection_has_a_deadline_too(served: MoAServer) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode())
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b"}]}"):
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"GET /v1/mod")  # and no more
        assert sock.recv(100) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 4


def test_repeated_log_lines_are_rate_limited() -> None:
    now = [0.0]
    limit = RepeatLimit(burst=3, window=10.0, clock=lambda: now[0])

    def line(name: str = "asyncio", msg: str = "socket.accept() out of system resource") -> Any:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    assert [limit.filter(line()) for _ in range(1000)].count(True) == 3
    assert limit.filter(line(msg="another line"))  # a kind of its own
    now[0] = 10.0
    record = line()
    assert limit.filter(record) and "997 similar lines held back" in record.getMessage()
    access = ("1.2.3.4:5", "GET", "/v1/models", "1.1", 200)
    ok = [
        limit.filter(logging.LogRecord("uvicorn.access", 20, "", 1, "%s", access, None))
        for _ in range(50)
    ]
    assert all(ok)  # successful requests are never held back


# -------------------------------------------------------------------------- 6-7: secrets


def test_upstream_key_echoed_masked_is_removed_from_response_and_log(
    upstream: OpenAICompatibleServer, served: MoAServer, logs: Records
) -> None:
    echoed = f"Incorrect API key provided: {UPSTREAM_KEY[:7]}{'*' * 12}{UPSTREAM_KEY[-4:]}."
    upstream.add_faults("p1", FaultSpec(Fault.HTTP_401, message=echoed))
    status, _, body = ask(served, _request(_chat()))
    assert status == 502
    message = error_of(body)["message"]
    assert "Incorrect API key provided: **********" in message
    for shown in (message, logs.text):
        for piece in (UPSTREAM_KEY[:7], UPSTREAM_KEY[-4:], "*" * 12 + UPSTREAM_KEY[-4:]):
            assert piece not in shown


KEY_FORMS = {
    "whole": UPSTREAM_KEY,
    "openai-masked": f"{UPSTREAM_KEY[:7]}{'*' * 12}{UPSTREAM_KEY[-4:]}",
    "dots": f"{UPSTREAM_KEY[:7]}...{UPSTREAM_KEY[-4:]}",
    "ellipsis": f"{UPSTREAM_KEY[:7]}\u2026{UPSTREAM_KEY[-4:]}",
    "bullets": f"{UPSTREAM_KEY[:4]}\u2022\u2022\u2022\u2022{UPSTREAM_KEY[-4:]}",
    "prefix": UPSTREAM_KEY[:10],
    "suffix": f"key ending in {UPSTREAM_KEY[-4:]}",
    "middle": UPSTREAM_KEY[5:20],
}


@pytest.mark.parametrize("form", KEY_FORMS.values(), ids=KEY_FORMS.keys())
def test_every_form_of_a_known_key_is_redacted(form: str) -> None:
    text = redact(f"upstream said: {form}.", [UPSTREAM_KEY])
    for piece in (UPSTREAM_KEY[:7], UPSTREAM_KEY[-4:], UPSTREAM_KEY[5:20]):
        assert piece not in text, text
    assert text.startswith("upstream said: ") and "**********" in text


def test_an_unknown_key_echoed_masked_is_redacted() -> None:
    text = redact("Incorrect API key provided: sk-proj-ab************wxyz.")
    assert text == "Incorrect API key provided: **********."


def test_query_strings_are_removed_from_the_access_log() -> None:
    config = log_config()
    assert config["filters"]["access_query"]["()"] is AccessQueryRedaction
    record = logging.LogRecord(
        "uvicorn.access", 20, "", 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:9", "POST", f"/v1/chat/completions?api_key={KEY}", "1.1", 401), None,
    )  # fmt: skip
    assert AccessQueryRedaction().filter(record)
    assert KEY not in record.getMessage() and "?[query removed]" in record.getMessage()


# -------------------------------------------------------------------------- 8: disconnects


def test_streams_closed_early_leave_no_upstream_call_running(
    upstream: OpenAICompatibleServer, served: MoAServer
) -> None:
    served.moa = mixture(upstream, "slow-agg")
    body = {"model": NAME, "stream": True, "messages": [{"role": "user", "content": "Hi?"}]}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def closed_early(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST", served.base_url + "/chat/completions", json=body, headers=headers
        ) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if '"content":"w' in line.replace(" ", ""):
                    return  # the first answer token: leave

    async def streams(count: int) -> None:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await asyncio.gather(*(closed_early(client) for _ in range(count)))

    try:
        upstream.reset()
        asyncio.run(streams(MAX_CONNECTIONS - 5))  # under the cap of the fixture
        deadline = time.monotonic() + 2
        while upstream.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.in_flight() == 0
        outcomes = {r.outcome for r in upstream.requests_for("slow-agg")}
        assert outcomes == {"client_disconnected"}
    finally:
        served.moa = mixture(upstream)


def test_a_call_that_drops_a_cancellation_is_cancelled_again() -> None:
    # What Python 3.11's asyncio.wait_for does when the awaited chunk arrives as the run is
    # cancelled (langchain_openai reads every chunk through it): the call goes on.
    reads = []

    async def stream_that_drops_one_cancel() -> Any:
        dropped = False
        while len(reads) < 300:  # 3 s, then it ends on its own
            try:
                await asyncio.sleep(0.01)
                reads.append(1)
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped = True  # swallowed, as wait_for does

    async def main() -> bool:
        call = asyncio.ensure_future(call_async(stream_that_drops_one_cancel, CallPolicy()))
        await asyncio.sleep(0.05)
        call.cancel()
        done, _ = await asyncio.wait({call}, timeout=1)
        before = len(reads)
        await asyncio.sleep(0.2)
        return bool(done) and call.cancelled() and len(reads) == before

    assert asyncio.run(main())


async def _cancelled_as_its_future_completes(wait_for: Any) -> bool:
    """Whether a task in ``wait_for`` is cancelled when its future completes in the same loop
    turn as the cancellation (CPython gh-86296)."""
    future = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(wait_for(future, 10))
    await asyncio.sleep(0)  # the task waits
    future.set_result("chunk")
    task.cancel()
    await asyncio.wait({task})
    return task.cancelled()


def test_langchain_openai_streams_are_cancellable_once_served(served: MoAServer) -> None:
    from langchain_openai.chat_models import _client_utils

    assert asyncio.run(_cancelled_as_its_future_completes(_client_utils.asyncio.wait_for))
    if sys.version_info < (3, 12):  # the bug the served module's wait_for avoids
        assert not asyncio.run(_cancelled_as_its_future_completes(asyncio.wait_for))
    assert _client_utils.asyncio.sleep is asyncio.sleep  # the rest of asyncio as it was


# -------------------------------------------------------------------------- 9-10: the head


def test_no_redirect_is_built_from_the_host_header(served: MoAServer) -> None:
    status, headers, body = ask(served, b"GET /v1/models/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert status == 404 and "location" not in headers
    assert b"evil.example" not in body


def test_10000_headers_are_431(served: MoAServer) -> None:
    status, headers, body = ask(served, _request(_chat(), headers=tuple(
        f"X-H{i}: v" for i in range(10_000))))  # fmt: skip
    assert status == 431 and headers["connection"] == "close"
    assert error_of(body)["code"] == "request_head_too_large"


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/9.9", "HTTP/0.9"])
def test_unknown_http_versions_are_505(served: MoAServer, version: str) -> None:
    status, headers, _ = ask(served, _request(_chat(), version=version))
    assert status == 505 and headers["connection"] == "close"


# -------------------------------------------------------------------------- the corpus


def test_malformed_corpus_is_answered_4xx_each_within_1_s(
    served: MoAServer, upstream: OpenAICompatibleServer, logs: Records
) -> None:
    corpus = malformed_corpus()
    assert len(corpus) >= 200
    before = upstream.request_count()
    answers = {name: exchange(served.port, data) for name, data in corpus}
    bad = {n: s for n, (s, _, _) in answers.items() if not (400 <= s < 500 or s == 505)}
    assert not bad
    slow = {n: round(t, 2) for n, (_, _, t) in answers.items() if t >= 1.0}
    assert not slow
    assert upstream.request_count() == before  # not one model call
    assert not any(r.exc_info for r in logs.records)
    assert_still_serves(served)
