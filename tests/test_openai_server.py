"""Tests for the scripted OpenAI-compatible test server (real clients, offline)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from moa_graph.testing import (
    Fault,
    FaultSpec,
    ModelScript,
    OpenAICompatibleServer,
    ServerProcess,
    tokenize,
)

API_KEY = "sk-test-not-a-secret"
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "fixed": ModelScript(reply="Paris is the capital of France."),
        "slow": ModelScript(reply="one two three", ttft=0.1),
    }
    with OpenAICompatibleServer(scripts) as srv:
        yield srv


@pytest.fixture
def client(server: OpenAICompatibleServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


def chat(server: OpenAICompatibleServer, model: str = "fixed", **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=server.base_url, api_key=API_KEY, max_retries=0, **kwargs
    )


def create(client: openai.OpenAI, model: str = "fixed", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=USER, **kwargs)


# --------------------------------------------------------------------- answers


def test_tokenize_round_trips() -> None:
    for text in ["", "a", "  a  b\nc  ", "one two", "   "]:
        assert "".join(tokenize(text)) == text
    assert tokenize("a b c") == ["a", " b", " c"]


def test_openai_client_gets_scripted_reply_and_usage(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    resp = create(client)
    assert resp.object == "chat.completion"
    assert resp.model == "fixed"
    assert resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.content == "Paris is the capital of France."
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (6, 6)
    assert resp.usage.total_tokens == 12


def test_default_reply_names_the_model_and_the_question(client: openai.OpenAI) -> None:
    resp = create(client, model="unscripted-model")
    assert resp.choices[0].message.content == (
        "[unscripted-model] answer to: What is the capital of France?"
    )


def test_callable_reply_sees_the_request(server: OpenAICompatibleServer) -> None:
    seen: list[dict[str, Any]] = []

    def reply(request: dict[str, Any]) -> str:
        seen.append(request)
        return f"temperature={request['temperature']}"

    server.set_script("fn", ModelScript(reply=reply))
    assert chat(server, "fn", temperature=0.25).invoke("hi").content == "temperature=0.25"
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_failing_reply_callable_is_a_500(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    def boom(request: dict[str, Any]) -> str:
        raise ZeroDivisionError("boom")

    server.set_script("bad", ModelScript(reply=boom))
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        create(client, model="bad")
    assert server.requests_for("bad")[0].outcome == "reply_error"


def test_chat_openai_invoke_and_stream_agree(server: OpenAICompatibleServer) -> None:
    llm = chat(server, "talker", stream_usage=True)
    invoked = llm.invoke("tell me a story")
    chunks = list(llm.stream("tell me a story"))
    assert len(chunks) > 3  # really streamed, token by token
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert isinstance(streamed, AIMessageChunk)
    assert streamed.content == invoked.content == "[talker] answer to: tell me a story"
    assert streamed.usage_metadata is not None
    assert streamed.usage_metadata["output_tokens"] == 7
    assert streamed.usage_metadata == invoked.usage_metadata
    assert server.requests_for("talker")[1].params["stream_options"] == {"include_usage": True}


def test_raw_stream_chunks_follow_openai_format(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    chunks = list(create(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == "Paris is the capital of France."


async def test_async_chat_openai(server: OpenAICompatibleServer) -> None:
    llm = chat(server)
    assert (await llm.ainvoke("hi")).content == "Paris is the capital of France."
    parts = [c.content async for c in llm.astream("hi")]
    assert "".join(map(str, parts)) == "Paris is the capital of France."


def test_max_tokens_truncates_with_finish_reason_length(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    resp = create(client, max_tokens=2)
    assert resp.choices[0].message.content == "Paris is"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 2
    # ChatOpenAI sends ``max_completion_tokens``; streaming is truncated too.
    llm = chat(server, max_tokens=3)
    message = llm.invoke("hi")
    assert message.content == "Paris is the"
    assert message.response_metadata["finish_reason"] == "length"
    assert "".join(str(c.content) for c in llm.stream("hi")) == "Paris is the"


def test_stop_cuts_before_the_first_stop_string(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    resp = create(client, stop=["France", "capital"])
    assert resp.choices[0].message.content == "Paris is the "
    assert resp.choices[0].finish_reason == "stop"
    assert chat(server, stop=["the"]).invoke("hi").content == "Paris is "


def test_n_choices(client: openai.OpenAI) -> None:
    resp = create(client, n=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[1].message.content == "Paris is the capital of France."


def test_models_endpoint_lists_scripted_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["fixed", "slow"]


def test_chat_together_invoke(server: OpenAICompatibleServer) -> None:
    from langchain_together import ChatTogether

    llm = ChatTogether(
        model="together-model", base_url=server.base_url, api_key=API_KEY, max_retries=0
    )
    assert llm.invoke("hi").content == "[together-model] answer to: hi"
    assert server.request_count("together-model") == 1


# --------------------------------------------------------------------- faults

STATUS_FAULTS = [
    (Fault.HTTP_429, openai.RateLimitError, 429),
    (Fault.HTTP_500, openai.InternalServerError, 500),
    (Fault.HTTP_503, openai.InternalServerError, 503),
    (Fault.HTTP_400, openai.BadRequestError, 400),
    (Fault.HTTP_401, openai.AuthenticationError, 401),
    (Fault.HTTP_404, openai.NotFoundError, 404),
    (Fault.CONTEXT_LENGTH, openai.BadRequestError, 400),
]


@pytest.mark.parametrize(("fault", "error", "status"), STATUS_FAULTS)
@pytest.mark.parametrize("stream", [False, True])
def test_status_faults_raise_the_matching_openai_error(
    server: OpenAICompatibleServer,
    client: openai.OpenAI,
    fault: Fault,
    error: type[openai.APIStatusError],
    status: int,
    stream: bool,
) -> None:
    server.add_faults("fixed", fault)
    with pytest.raises(error) as info:
        create(client, stream=stream)
    assert info.value.status_code == status
    assert API_KEY not in info.value.response.text
    record = server.requests_for("fixed")[0]
    assert (record.outcome, record.status) == (fault.value, status)
    # The fault was consumed: the next request is answered normally.
    assert create(client).choices[0].message.content == "Paris is the capital of France."


def test_429_carries_retry_after_and_clients_honour_it(server: OpenAICompatibleServer) -> None:
    server.add_faults("fixed", FaultSpec(Fault.HTTP_429, retry_after=0.3))
    with (
        openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0) as c,
        pytest.raises(openai.RateLimitError) as info,
    ):
        create(c)
    assert info.value.response.headers["retry-after"] == "0.3"
    assert info.value.code == "rate_limit_exceeded"

    quick_429 = FaultSpec(Fault.HTTP_429, retry_after=0.15)
    server.add_faults("fixed", quick_429, quick_429)
    llm = ChatOpenAI(model="fixed", base_url=server.base_url, api_key=API_KEY, max_retries=2)
    started = time.perf_counter()
    assert llm.invoke("hi").content == "Paris is the capital of France."
    assert time.perf_counter() - started >= 0.3
    outcomes = [r.outcome for r in server.requests_for("fixed")]
    assert outcomes == ["http_429", "http_429", "http_429", "stop"]


def test_context_length_fault_has_openai_error_code(server: OpenAICompatibleServer) -> None:
    server.add_faults("fixed", Fault.CONTEXT_LENGTH)
    with pytest.raises(openai.BadRequestError) as info:
        chat(server).invoke("hi")
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    # langchain-openai recognises some provider messages as a context overflow.
    message = "Input tokens exceed the configured limit of 8192 tokens."
    server.add_faults("fixed", FaultSpec(Fault.CONTEXT_LENGTH, message=message))
    with pytest.raises(ContextOverflowError):
        chat(server).invoke("hi")


def test_hang_times_out_without_blocking_other_requests(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    server.add_faults("fixed", "hang")
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        create(client, timeout=0.3)
    assert 0.3 <= time.perf_counter() - started < 2
    assert create(client).choices[0].message.content == "Paris is the capital of France."
    record = server.requests_for("fixed")[0]
    assert record.outcome == "hang"
    assert record.status is None


def test_hanging_request_does_not_block_concurrent_requests_or_shutdown() -> None:
    server = OpenAICompatibleServer({"m": ModelScript(reply="ok", faults=["hang"])}).start()
    results: list[Any] = []

    async def run() -> None:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0
        ) as c:
            hanging = asyncio.create_task(c.chat.completions.create(model="m", messages=USER))
            await asyncio.sleep(0.05)
            for _ in range(3):
                resp = await c.chat.completions.create(model="m", messages=USER)
                results.append(resp.choices[0].message.content)
            started = time.perf_counter()
            server.stop()  # must not wait for the hanging request
            results.append(time.perf_counter() - started)
            with pytest.raises(openai.APIConnectionError):
                await hanging

    asyncio.run(run())
    assert results[:3] == ["ok", "ok", "ok"]
    assert results[3] < 1.0


def test_reset_is_a_connection_error(server: OpenAICompatibleServer, client: openai.OpenAI) -> None:
    server.add_faults("fixed", Fault.RESET)
    with pytest.raises(openai.APIConnectionError):
        create(client)
    assert create(client).choices[0].message.content == "Paris is the capital of France."


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_json_fails_to_decode(
    server: OpenAICompatibleServer, client: openai.OpenAI, stream: bool
) -> None:
    server.add_faults("fixed", "malformed_json")
    with pytest.raises(json.JSONDecodeError):
        resp = create(client, stream=stream)
        if stream:
            list(resp)
    with pytest.raises(json.JSONDecodeError):
        server.add_faults("fixed", "malformed_json")
        chat(server, streaming=stream).invoke("hi")


@pytest.mark.parametrize("stream", [False, True])
def test_empty_fault_returns_empty_content(server: OpenAICompatibleServer, stream: bool) -> None:
    server.add_faults("fixed", Fault.EMPTY)
    message = chat(server, streaming=stream).invoke("hi")
    assert message.content == ""
    assert server.requests_for("fixed")[0].outcome == "empty"


def test_cut_stream_raises_mid_stream(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    server.add_faults("fixed", FaultSpec(Fault.CUT_STREAM, chunks_before_cut=2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in create(client, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Paris is"

    server.add_faults("fixed", Fault.CUT_STREAM)
    with pytest.raises(openai.APIConnectionError):
        list(chat(server).stream("hi"))
    server.add_faults("fixed", Fault.CUT_STREAM)  # non-stream: truncated body
    with pytest.raises(openai.APIConnectionError):
        create(client)


def test_fault_delay(server: OpenAICompatibleServer, client: openai.OpenAI) -> None:
    server.add_faults("fixed", FaultSpec(Fault.HTTP_500, delay=0.2))
    started = time.perf_counter()
    with pytest.raises(openai.InternalServerError):
        create(client)
    assert time.perf_counter() - started >= 0.2


# --------------------------------------------------------------------- latency


def test_latency_is_scripted_and_recorded(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    server.set_script("timed", ModelScript(reply="a b c d", ttft=0.1, per_token=0.02))
    started = time.perf_counter()
    create(client, model="timed")
    assert time.perf_counter() - started >= 0.18
    first_token = None
    started = time.perf_counter()
    for chunk in create(client, model="timed", stream=True):
        if first_token is None and chunk.choices and chunk.choices[0].delta.content:
            first_token = time.perf_counter() - started
    total = time.perf_counter() - started
    assert first_token is not None
    assert 0.1 <= first_token < total
    assert total >= 0.18
    for record in server.requests_for("timed"):
        assert record.scripted_latency == pytest.approx(0.18)
        assert (record.ttft, record.per_token, record.tail) == (0.1, 0.02, False)
        assert record.duration is not None
        assert record.duration >= 0.17


def test_heavy_tail_is_seeded_and_reset_reseeds(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    script = ModelScript(reply="x", ttft=0.001, tail_probability=0.5, tail_factor=10, seed=7)
    server.set_script("tail", script)
    for _ in range(10):
        create(client, model="tail")
    first = [(r.tail, r.scripted_latency) for r in server.requests_for("tail")]
    assert {tail for tail, _ in first} == {True, False}
    for tail, latency in first:
        assert latency == pytest.approx(0.01 if tail else 0.001)
    server.reset()
    assert server.request_count() == 0
    for _ in range(10):
        create(client, model="tail")
    assert [(r.tail, r.scripted_latency) for r in server.requests_for("tail")] == first


def test_concurrent_requests_are_served_concurrently(server: OpenAICompatibleServer) -> None:
    async def run() -> None:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0
        ) as c:
            replies = await asyncio.gather(
                *(c.chat.completions.create(model="slow", messages=USER) for _ in range(50))
            )
            assert {r.choices[0].message.content for r in replies} == {"one two three"}

    asyncio.run(run())
    assert server.request_count("slow") == 50
    assert server.most_in_flight("slow") > 1  # not a wall-time bound: a busy machine breaks it


def test_keep_alive_reuses_one_connection(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    before = server.connections_accepted
    for _ in range(4):
        create(client)
    server.add_faults("fixed", "http_500")
    with pytest.raises(openai.InternalServerError):
        create(client)
    create(client)
    assert server.connections_accepted - before == 1


# --------------------------------------------------------------------- log & HTTP


def test_request_log_records_requests_but_never_the_api_key(
    server: OpenAICompatibleServer, client: openai.OpenAI
) -> None:
    before = time.time()
    create(client, temperature=0.5, max_tokens=50)
    list(create(client, model="other", stream=True))
    records = server.requests()
    assert [r.model for r in records] == ["fixed", "other"]
    assert [r.stream for r in records] == [False, True]
    first = records[0]
    assert first.messages == USER
    assert first.params == {"temperature": 0.5, "max_tokens": 50}
    assert first.auth_present
    assert first.response == "Paris is the capital of France."
    assert first.answered_at is not None
    assert before <= first.received_at <= first.answered_at <= time.time()
    assert (first.prompt_tokens, first.completion_tokens) == (6, 6)
    assert server.request_count() == 2
    assert server.request_count("other") == 1
    assert len(server.requests_for("fixed")) == 1
    assert API_KEY not in repr(records)
    assert API_KEY not in json.dumps([r.to_dict() for r in records])
    raw = httpx.get(server.url + "/_log")
    assert API_KEY not in raw.text
    assert len(raw.json()["requests"]) == 2
    server.reset()
    assert server.requests() == []


def test_chunked_request_body_and_errors_for_bad_requests(server: OpenAICompatibleServer) -> None:
    body = json.dumps({"model": "fixed", "messages": USER}).encode()
    with httpx.Client(base_url=server.url) as http:
        chunked = http.post("/v1/chat/completions", content=iter([body[:10], body[10:]]))
        assert chunked.status_code == 200
        assert chunked.json()["choices"][0]["message"]["content"].startswith("Paris")
        assert http.post("/v1/chat/completions", content=b"{nope").status_code == 400
        assert http.get("/v1/chat/completions").status_code == 405
        assert http.get("/nowhere").status_code == 404
        closing = http.post("/v1/chat/completions", content=body, headers={"Connection": "close"})
        assert closing.status_code == 200


def test_script_json_round_trip() -> None:
    script = ModelScript(
        reply="hi", ttft=0.5, tail_probability=0.1, faults=["http_429", FaultSpec(Fault.HANG)]
    )
    copy = ModelScript.from_dict(json.loads(json.dumps(script.to_dict())))
    assert copy.to_dict() == script.to_dict()
    with pytest.raises(TypeError):
        ModelScript(reply=lambda _: "x").to_dict()


# --------------------------------------------------------------------- subprocess


def test_server_process_serves_logs_resets_and_takes_scripts() -> None:
    scripts = {"remote": ModelScript(reply="from the child", faults=["http_503"])}
    with ServerProcess(scripts) as proc:
        assert proc.port > 0
        llm = ChatOpenAI(model="remote", base_url=proc.base_url, api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError):
            llm.invoke("hi")
        assert llm.invoke("hi").content == "from the child"
        assert [r.outcome for r in proc.requests_for("remote")] == ["http_503", "stop"]
        assert proc.requests()[1].auth_present
        assert API_KEY not in repr(proc.requests())

        proc.reset()
        assert proc.request_count() == 0
        proc.set_scripts({"remote": ModelScript(reply="new script", faults=["http_401"])})
        with pytest.raises(openai.AuthenticationError):
            llm.invoke("hi")
        assert llm.invoke("hi").content == "new script"
        assert proc.request_count("remote") == 2
        pid = proc.pid
    assert pid is not None
    assert proc.pid is None


def test_module_cli_prints_port_and_stops_on_sigterm() -> None:
    scripts = json.dumps({"cli": ModelScript(reply="from the cli").to_dict()})
    cmd = [sys.executable, "-m", "moa_graph.testing.openai_server", "--scripts-json", scripts]
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert ready["base_url"] == f"http://127.0.0.1:{ready['port']}/v1"
            with openai.OpenAI(base_url=ready["base_url"], api_key=API_KEY) as c:
                assert [m.id for m in c.models.list()] == ["cli"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_client_disconnect_mid_stream_is_recorded(server: OpenAICompatibleServer) -> None:
    server.set_script("paced", ModelScript(reply="tok " * 100, per_token=0.01))
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0) as c:
        stream = create(c, model="paced", stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.monotonic() + 3
        while server.requests()[-1].outcome == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests()[-1].outcome == "client_disconnected"
        # The server is unaffected.
        assert create(c).choices[0].message.content == "Paris is the capital of France."


def test_messages_can_be_left_out_of_the_log() -> None:
    with OpenAICompatibleServer(record_messages=False) as srv:
        ChatOpenAI(model="m", base_url=srv.base_url, api_key=API_KEY).invoke("secret prompt")
        (record,) = srv.requests()
        assert record.messages == []
        assert record.prompt_tokens == 2
