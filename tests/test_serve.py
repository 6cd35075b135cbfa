"""``moa_graph.serve``: the mixture as an OpenAI-compatible endpoint, used by real clients.

The served mixture's proposers and aggregator are ``ChatOpenAI`` clients of a loopback scripted
OpenAI-compatible server, so requests go OpenAI client -> MoA server -> MoA -> OpenAI-compatible
server: MoA all the way down, offline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from moa_graph import ChatMixtureOfAgents
from moa_graph.serve.openai_app import MoAServer
from moa_graph.serve.openai_requests import RequestError, parse_chat_request
from moa_graph.testing import FaultSpec, ModelScript, OpenAICompatibleServer
from tests.fakes import ScriptedChatModel

UPSTREAM_KEY = "sk-upstream-abcdefghijklmnopqrstuv"
SERVED_KEY = "served-key-0123456789abcdef"
LEAKED = "sk-proj-leakedleakedleaked0123"
ANSWER = "Paris is the capital of France, said the mixture."
NAME = "moa-test"
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="Paris."),
        "p2": ModelScript(reply="It is Paris."),
        "agg": ModelScript(reply=ANSWER),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


def remote(upstream: OpenAICompatibleServer, model: str) -> ChatOpenAI:
    # stream_usage: with a custom base_url ChatOpenAI asks for streamed usage only when told.
    return ChatOpenAI(
        model=model,
        base_url=upstream.base_url,
        api_key=UPSTREAM_KEY,  # type: ignore[arg-type]
        max_retries=0,
        stream_usage=True,
    )


def mixture(upstream: OpenAICompatibleServer, **options: Any) -> ChatMixtureOfAgents:
    return ChatMixtureOfAgents(
        proposers=[remote(upstream, "p1"), remote(upstream, "p2")],
        aggregator=remote(upstream, "agg"),
        layers=2,
        max_retries=0,
        **options,
    )


@pytest.fixture
def served(upstream: OpenAICompatibleServer) -> Iterator[MoAServer]:
    with MoAServer(mixture(upstream), model_name=NAME) as server:
        yield server


@pytest.fixture
def client(served: MoAServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=NAME, messages=USER, **kwargs)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- answers


def test_completion_is_the_aggregators_answer_with_usage(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    reply = ask(client)
    assert reply.object == "chat.completion"
    assert reply.model == NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    # usage sums all three calls of the run
    calls = upstream.requests()
    assert sorted(r.model for r in calls) == ["agg", "p1", "p2"]
    assert reply.usage.completion_tokens == sum(r.completion_tokens for r in calls)
    assert reply.usage.prompt_tokens == sum(r.prompt_tokens for r in calls)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_yields_token_deltas_then_finish_and_usage(client: openai.OpenAI) -> None:
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) >= 5
    assert "".join(deltas) == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.model == NAME and c.id == chunks[0].id for c in chunks)


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(ask(client, stream=True))
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER


def test_tokens_are_sent_as_the_aggregator_writes_them(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    upstream.set_script("agg", ModelScript(reply="one two three four five six", per_token=0.1))
    arrivals = []
    for chunk in ask(client, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] > 0.35  # spread over the aggregator's pace, not batched


def test_conversation_roles_and_text_parts_reach_the_proposers(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Capital of "},
                {"type": "text", "text": "Spain?"},
            ],
        },
        {"role": "assistant", "content": "Madrid."},
        {"role": "user", "content": "And of France?"},
    ]
    client.chat.completions.create(model=NAME, messages=messages)  # type: ignore[arg-type]
    sent = upstream.requests_for("p1")[0].messages
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "Answer briefly."),
        ("user", "Capital of Spain?"),
        ("assistant", "Madrid."),
        ("user", "And of France?"),
    ]


def test_stop_goes_to_the_aggregator_and_sampling_hints_are_ignored(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    with openai.OpenAI(base_url=served.base_url, api_key="x", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=NAME,
            messages=USER,
            stop=[", said"],
            temperature=1.5,
            max_tokens=3,  # type: ignore[arg-type]
        )
    assert raw.parse().choices[0].message.content == "Paris is the capital of France"
    assert raw.headers["x-moa-ignored-params"] == "max_tokens,temperature"
    params = {r.model: r.params for r in upstream.requests()}
    assert params["agg"]["stop"] == [", said"]
    assert "stop" not in params["p1"]
    assert all(p.get("temperature") != 1.5 and p.get("max_tokens") != 3 for p in params.values())


@pytest.mark.parametrize("stream", [False, True])
def test_a_requests_seed_is_the_runs_seed(
    client: openai.OpenAI, upstream: OpenAICompatibleServer, stream: bool
) -> None:
    reply = ask(client, seed=41, stream=stream)
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices) == ANSWER
    seeds = {r.model: r.params.get("seed") for r in upstream.requests()}
    assert seeds == {"p1": 41, "p2": 41, "agg": 41}  # each proposer's first (only) sample
    upstream.reset()
    ask(client)  # the next request without one draws as the mixture is configured: no seed
    assert all("seed" not in r.params for r in upstream.requests())


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [NAME]


def test_default_model_name_is_the_mixtures(upstream: OpenAICompatibleServer) -> None:
    moa = mixture(upstream)
    with MoAServer(moa) as server, openai.OpenAI(base_url=server.base_url, api_key="x") as c:
        assert [m.id for m in c.models.list()] == [moa.model_name] == ["moa:agg"]
        reply = c.chat.completions.create(model="moa:agg", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == ANSWER


# -------------------------------------------------------------------------- LangChain client


def test_langchain_chat_openai_uses_the_mixture_as_a_model(served: MoAServer) -> None:
    llm = ChatOpenAI(model=NAME, base_url=served.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    answer = llm.invoke("What is the capital of France?")
    assert answer.content == ANSWER
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] > 0
    chunks = list(llm.stream("What is the capital of France?"))
    assert sum(1 for c in chunks if c.content) >= 5
    total = sum(chunks[1:], chunks[0])
    assert isinstance(total, AIMessageChunk) and total.content == ANSWER


async def test_langchain_chat_openai_async_stream(served: MoAServer) -> None:
    llm = ChatOpenAI(model=NAME, base_url=served.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    pieces = [c.content async for c in llm.astream("Capital of France?")]
    assert "".join(str(p) for p in pieces) == ANSWER


# -------------------------------------------------------------------------- auth


def test_api_key_is_required_when_set(upstream: OpenAICompatibleServer) -> None:
    with MoAServer(mixture(upstream), model_name=NAME, api_key=SERVED_KEY) as server:
        for key in ("wrong-key", SERVED_KEY[:-1], SERVED_KEY + "x"):
            with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as bad:
                with pytest.raises(openai.AuthenticationError) as info:
                    ask(bad)
                assert info.value.code == "invalid_api_key"
                with pytest.raises(openai.AuthenticationError):
                    bad.models.list()
        missing = httpx.post(server.base_url + "/chat/completions", json={"model": NAME})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        with openai.OpenAI(base_url=server.base_url, api_key=SERVED_KEY, max_retries=0) as good:
            assert ask(good).choices[0].message.content == ANSWER
    assert upstream.request_count() == 3  # refused requests never reached a model


# -------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "user", "content": "  "}]}, "empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role 'wizard'"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "image_url",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "no tools"),
        ({"n": 3}, "n=3"),
        ({"extra_body": {"base_url": "http://evil.example/v1"}}, "base_url"),
        ({"extra_body": {"api_key": "sk-other"}}, "api_key"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": -1}, "seed: must be an integer from 0"),
        ({"seed": "7"}, "seed: must be an integer"),
        ({"seed": 2**40}, "seed: must be an integer from 0 to 2147483647"),
    ],
)
def test_bad_requests_are_400_with_openais_error_shape(
    client: openai.OpenAI,
    upstream: OpenAICompatibleServer,
    request_kwargs: dict[str, Any],
    fragment: str,
) -> None:
    kwargs = {"model": NAME, "messages": USER, **request_kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.status_code == 400
    assert fragment in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "invalid_request_error"
    assert upstream.request_count() == 0


def test_invalid_json_is_400(served: MoAServer) -> None:
    response = httpx.post(
        served.base_url + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "JSON" in error["message"]


def test_unknown_model_is_404(client: openai.OpenAI, upstream: OpenAICompatibleServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert upstream.request_count() == 0


def test_unknown_route_and_wrong_method(served: MoAServer) -> None:
    assert httpx.get(served.url + "/v1/embeddings").status_code == 404
    assert httpx.get(served.base_url + "/chat/completions").status_code == 405
    assert httpx.get(served.url + "/models").json()["data"][0]["id"] == NAME  # no /v1 prefix


def test_parse_refuses_what_could_redirect_the_mixture() -> None:
    for field in ("base_url", "api_key", "organization", "proposers", "aggregator"):
        body = f'{{"model": "m", "messages": [], "{field}": "x"}}'.encode()
        with pytest.raises(RequestError, match="Unrecognized request argument") as info:
            parse_chat_request(body, served_name="m")
        assert info.value.status == 400 and info.value.param == field


# -------------------------------------------------------------------------- failures


def test_failed_run_is_502_with_the_cause_and_no_key(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    leak = FaultSpec("http_401", message=f"Incorrect API key provided: {LEAKED}")
    upstream.add_faults("p1", leak)
    upstream.add_faults("p2", leak)
    with pytest.raises(openai.APIStatusError) as info:
        ask(client)
    assert info.value.status_code == 502
    message = info.value.message
    assert "ProposalsFailedError" in message and "0 of 2 proposers answered" in message
    assert LEAKED not in message and UPSTREAM_KEY not in message
    assert LEAKED not in str(info.value.body) and UPSTREAM_KEY not in str(info.value.body)


def test_failed_run_before_any_token_is_an_http_error_when_streaming(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    upstream.add_faults("agg", FaultSpec("http_400", message=f"bad key {LEAKED}"))
    with pytest.raises(openai.APIStatusError) as info:
        list(ask(client, stream=True))
    assert info.value.status_code == 502
    assert "AggregatorError" in info.value.message and LEAKED not in info.value.message


def test_failure_mid_stream_is_an_error_event(
    client: openai.OpenAI, upstream: OpenAICompatibleServer
) -> None:
    upstream.add_faults("agg", FaultSpec("cut_stream", chunks_before_cut=3))
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in ask(client, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "Paris is the"
    assert "aggregator" in info.value.message


def test_unexpected_crash_is_500_redacted() -> None:
    boom = ScriptedChatModel(reply="x")
    moa = ChatMixtureOfAgents(proposers=[boom], aggregator=boom, layers=2)
    with MoAServer(moa, model_name=NAME, api_key=SERVED_KEY) as server:
        server.moa = _Crashing(f"boom {SERVED_KEY} {LEAKED}")  # type: ignore[assignment]
        c = openai.OpenAI(base_url=server.base_url, api_key=SERVED_KEY, max_retries=0)
        with c, pytest.raises(openai.InternalServerError) as info:
            ask(c)
    assert "RuntimeError: boom" in info.value.message
    assert SERVED_KEY not in info.value.message and LEAKED not in info.value.message


class _Crashing:
    """Stands in for a mixture whose run crashes with an unexpected error."""

    max_input_chars = 1000
    plan = SimpleNamespace(proposer_layers=())  # no proposers: one model call a run

    def __init__(self, message: str) -> None:
        self.message = message

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(self.message)


# -------------------------------------------------------------------------- concurrency


async def test_parallel_requests_run_concurrently(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    for model in ("p1", "p2", "agg"):
        upstream.script_for(model).ttft = 0.2
    async with openai.AsyncOpenAI(base_url=served.base_url, api_key="x", max_retries=0) as c:

        async def one(i: int) -> str:
            messages = [{"role": "user", "content": f"Question {i}?"}]
            if i % 2:
                reply = await c.chat.completions.create(model=NAME, messages=messages)  # type: ignore[arg-type]
                return reply.choices[0].message.content or ""
            stream = await c.chat.completions.create(model=NAME, messages=messages, stream=True)  # type: ignore[arg-type]
            return "".join([ch.choices[0].delta.content or "" async for ch in stream])

        answers = await asyncio.gather(*(one(i) for i in range(10)))
    assert answers == [ANSWER] * 10
    assert upstream.request_count() == 30
    # runs in sequence would send at most one aggregator request at a time (not a wall-time
    # bound: a busy machine breaks it)
    assert upstream.most_in_flight("agg") > 1


async def test_client_that_goes_away_cancels_the_run(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    upstream.set_script("agg", ModelScript(reply=ANSWER, ttft=5.0))
    async with openai.AsyncOpenAI(
        base_url=served.base_url, api_key="x", max_retries=0, timeout=0.5
    ) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.chat.completions.create(model=NAME, messages=USER)  # type: ignore[arg-type]
    assert await outcomes(upstream, "agg", ["client_disconnected"]) == ["client_disconnected"]


@pytest.mark.parametrize("when", ["before-the-first-token", "mid-stream"])
async def test_client_that_leaves_a_stream_cancels_the_run(
    served: MoAServer, upstream: OpenAICompatibleServer, when: str
) -> None:
    if when == "before-the-first-token":
        upstream.set_script("agg", ModelScript(reply=ANSWER, ttft=5.0))
    else:
        upstream.set_script("agg", ModelScript(reply="word " * 50, per_token=0.1))
    async with openai.AsyncOpenAI(
        base_url=served.base_url, api_key="x", max_retries=0, timeout=0.5
    ) as c:
        if when == "before-the-first-token":
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model=NAME, messages=USER, stream=True)  # type: ignore[arg-type]
        else:
            stream = await c.chat.completions.create(model=NAME, messages=USER, stream=True)  # type: ignore[arg-type]
            received = 0
            async for chunk in stream:
                received += bool(chunk.choices and chunk.choices[0].delta.content)
                if received == 2:
                    break
            await stream.close()
    assert await outcomes(upstream, "agg", ["client_disconnected"]) == ["client_disconnected"]


def test_stream_is_server_sent_events_ending_with_done(served: MoAServer) -> None:
    body = {"model": NAME, "messages": USER, "stream": True}
    with httpx.stream("POST", served.base_url + "/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        text = response.read().decode()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == ANSWER


async def outcomes(upstream: OpenAICompatibleServer, model: str, expected: list[str]) -> list[str]:
    """``model``'s request outcomes, once they are ``expected`` (or after 3 s)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if [r.outcome for r in upstream.requests_for(model)] == expected:
            break
        await asyncio.sleep(0.05)
    return [r.outcome for r in upstream.requests_for(model)]
