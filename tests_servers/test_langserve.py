"""LangServe: ``create_app(moa)`` on a real uvicorn server, driven by ``RemoteRunnable``.

RemoteRunnable -> uvicorn (127.0.0.1) -> LangServe -> ChatMixtureOfAgents -> ChatOpenAI clients
-> the scripted OpenAI-compatible server (127.0.0.1). Runs only in the LangServe environment
(``make test-langserve``): LangServe's sse-starlette 1.x cannot share an environment with
``langgraph-cli[inmem]``. One server per module (sse-starlette 1.x keeps a global exit event
bound to the first event loop that used it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import ConfigurableField
from langserve import RemoteRunnable

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.serve.langserve_app import create_app
from moa_graph.testing import ModelScript, OpenAICompatibleServer

UPSTREAM_KEY = "sk-upstream-abcdefghijklmnopqrstuv"
ANSWER = "Paris is the capital of France, said the mixture."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="Paris."),
        "p2": ModelScript(reply="It is Paris."),
        "agg": ModelScript(reply=ANSWER),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


def mixture(upstream: OpenAICompatibleServer) -> ChatMixtureOfAgents:
    def spec(model: str) -> ProposerSpec:
        return ProposerSpec(
            model=f"openai:{model}",
            base_url=upstream.base_url,
            api_key=UPSTREAM_KEY,  # type: ignore[arg-type]
        )

    return ChatMixtureOfAgents(
        proposers=[spec("p1"), spec("p2")], aggregator=spec("agg"), layers=2, max_retries=0
    )


@pytest.fixture(scope="module")
def server_url(upstream: OpenAICompatibleServer) -> Iterator[str]:
    """One uvicorn server with two mounts: ``/moa`` (nothing configurable) and ``/tunable``."""
    app = create_app(mixture(upstream))
    tunable = mixture(upstream).configurable_fields(
        temperature=ConfigurableField(id="temperature", name="Temperature")
    )
    create_app(tunable, path="/tunable", configurable=("temperature",), app=app)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


async def closed(remote: RemoteRunnable) -> None:
    """Close a RemoteRunnable's clients on the test loop (its finalizer would use a dead one)."""
    remote.sync_client.close()
    await remote.async_client.aclose()


@pytest.fixture
async def remote(server_url: str) -> AsyncIterator[RemoteRunnable]:
    client = RemoteRunnable(f"{server_url}/moa/")
    yield client
    await closed(client)


def answered(message: Any) -> list[str]:
    return [p["text"] for p in message.response_metadata["proposals"] if p["status"] == "answered"]


def test_invoke_returns_the_aggregators_answer_with_proposals(remote: RemoteRunnable) -> None:
    result = remote.invoke(QUESTION)
    assert isinstance(result, AIMessage)
    assert result.content == ANSWER
    assert answered(result) == ["Paris.", "It is Paris."]
    assert result.response_metadata["model_name"] == "moa:agg"
    assert result.usage_metadata is not None and result.usage_metadata["output_tokens"] > 0


async def test_ainvoke(remote: RemoteRunnable) -> None:
    result = await remote.ainvoke([HumanMessage(QUESTION)])
    assert result.content == ANSWER


def test_batch_answers_every_input(remote: RemoteRunnable) -> None:
    results = remote.batch([QUESTION, "And of Italy?"])
    assert [r.content for r in results] == [ANSWER, ANSWER]
    assert all(answered(r) == ["Paris.", "It is Paris."] for r in results)


def test_stream_yields_the_aggregators_tokens(remote: RemoteRunnable) -> None:
    chunks = list(remote.stream(QUESTION))
    assert len(chunks) > 2
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.content == ANSWER
    assert answered(total) == ["Paris.", "It is Paris."]


async def test_astream_events_reports_one_chat_model_run(remote: RemoteRunnable) -> None:
    events = [e async for e in remote.astream_events(QUESTION, version="v2")]
    kinds = [e["event"] for e in events]
    assert kinds.count("on_chat_model_start") == 1
    assert kinds.count("on_chat_model_end") == 1
    tokens = "".join(
        e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"
    )
    assert tokens == ANSWER
    end = next(e for e in events if e["event"] == "on_chat_model_end")
    assert end["data"]["output"].content == ANSWER


@pytest.mark.parametrize(
    "configurable",
    [
        {"base_url": "http://127.0.0.1:9/v1"},
        {"api_key": "sk-attacker-0123456789abcdef"},
        {"model": "gpt-expensive"},
        {"aggregator": "openai:gpt-expensive"},
    ],
)
def test_clients_cannot_configure_models_endpoints_or_keys(
    remote: RemoteRunnable, upstream: OpenAICompatibleServer, configurable: dict[str, str]
) -> None:
    before = len(upstream.requests())
    with pytest.raises(httpx.HTTPStatusError) as caught:
        remote.invoke(QUESTION, config={"configurable": configurable})
    assert caught.value.response.status_code == 422
    assert len(upstream.requests()) == before  # refused before any model call


async def test_allowlisted_field_is_applied_and_others_refused(
    server_url: str, upstream: OpenAICompatibleServer
) -> None:
    tunable = RemoteRunnable(f"{server_url}/tunable/")
    before = len(upstream.requests())
    result = tunable.invoke(QUESTION, config={"configurable": {"temperature": 0.2}})
    assert result.content == ANSWER
    made = upstream.requests()[before:]
    assert {r.model for r in made} == {"p1", "p2", "agg"}
    assert {r.params.get("temperature") for r in made} == {0.2}

    for refused in ({"base_url": "http://127.0.0.1:9/v1"}, {"temperature": 0.2, "model": "x"}):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            tunable.invoke(QUESTION, config={"configurable": refused})
        assert caught.value.response.status_code == 422
    await closed(tunable)


def test_config_schema_exposes_only_the_allowlist(server_url: str) -> None:
    closed = str(httpx.get(f"{server_url}/moa/config_schema").json())
    assert "base_url" not in closed and "api_key" not in closed
    tunable = httpx.get(f"{server_url}/tunable/config_schema").json()
    schema = str(tunable)
    assert "temperature" in schema and "base_url" not in schema and "api_key" not in schema


def test_example_round_trip(upstream: OpenAICompatibleServer, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'proposers = ["openai:p1", "openai:p2"]\naggregator = "openai:agg"\nlayers = 2\n',
        encoding="utf-8",
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "OPENAI_"))},
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
    }
    script = Path(__file__).resolve().parents[1] / "examples" / "langserve_app.py"
    done = subprocess.run(
        [sys.executable, str(script), "--config", str(recipe)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"invoke: {ANSWER}" in done.stdout
    assert f"stream: {ANSWER}" in done.stdout
