"""LangGraph Server: ``langgraph dev`` serves ``langgraph.json``; ``langgraph_sdk`` drives it.

langgraph_sdk -> ``langgraph dev`` (child process, 127.0.0.1) -> the MoA graph built at import
by ``moa_graph.serve.langgraph_app`` from a TOML recipe -> ChatOpenAI clients -> the scripted
OpenAI-compatible server in this process (127.0.0.1). Runs only in the LangGraph Server
environment (``make test-lgserver``): ``langgraph-cli[inmem]`` pins sse-starlette 3.x, which
LangServe cannot use.
"""

from __future__ import annotations

import doctest
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from moa_graph.testing import ModelScript, OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[1]
ANSWER = "Paris is the capital of France, said the mixture."
QUESTION = "What is the capital of France?"
STARTUP_S = 120.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="Paris."),
        "p2": ModelScript(reply="It is Paris."),
        "agg": ModelScript(reply=ANSWER, per_token=0.005),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(upstream: OpenAICompatibleServer) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LANGSMITH_", "LANGCHAIN_", "MOA_GRAPH_", "OPENAI_", "TOGETHER_"))
    }
    env.update(
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        OPENAI_API_KEY="sk-upstream-abcdefghijklmnopqrstuv",
        OPENAI_BASE_URL=upstream.base_url,
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def langgraph_dev(
    config: str, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``langgraph dev`` serving ``config`` on a free loopback port, in a scratch folder."""
    work = tmp_path_factory.mktemp("lgserver")
    recipe = work / "recipe.toml"
    recipe.write_text(
        'proposers = ["openai:p1", "openai:p2"]\naggregator = "openai:agg"\n'
        "layers = 2\nmax_retries = 0\ntimeout = 30\n",
        encoding="utf-8",
    )
    port = free_port()
    log = (work / "server.log").open("wb")
    cli = Path(sys.executable).with_name("langgraph")
    command = [str(cli), "dev", "--config", str(ROOT / config), "--host", "127.0.0.1",
               "--port", str(port), "--no-browser", "--no-reload"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=work, env={**env, "MOA_GRAPH_CONFIG": str(recipe)}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"langgraph dev exited: {_tail(work / 'server.log')}")
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"langgraph dev did not start: {_tail(work / 'server.log')}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture(scope="module")
def server_url(
    upstream: OpenAICompatibleServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``langgraph.json``: threads kept by the server itself."""
    with langgraph_dev("langgraph.json", server_env(upstream), tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    from moa_graph.testing.postgres import PostgresServer

    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_server_url(
    upstream: OpenAICompatibleServer, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``langgraph-postgres.json``: threads kept in our PostgreSQL (``MOA_GRAPH_CHECKPOINT``)."""
    env = {**server_env(upstream), "MOA_GRAPH_CHECKPOINT": postgres_url}
    with langgraph_dev("langgraph-postgres.json", env, tmp_path_factory) as url:
        yield url


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    client = get_client(url=server_url)
    yield client
    await client.http.client.aclose()


async def test_the_moa_graph_is_served(client: LangGraphClient) -> None:
    assistants = await client.assistants.search(graph_id="moa")
    assert [a["graph_id"] for a in assistants] == ["moa"]
    schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
    assert "messages" in schemas["input_schema"]["properties"]
    assert "proposals" in schemas["output_schema"]["properties"]
    assert "aggregator_kwargs" in str(schemas.get("context_schema"))


async def test_streamed_run_on_a_thread_with_context(
    client: LangGraphClient, upstream: OpenAICompatibleServer
) -> None:
    thread = await client.threads.create()
    parts: list[Any] = []
    async for part in client.runs.stream(
        thread["thread_id"],
        "moa",
        input={"messages": [{"role": "user", "content": QUESTION}]},
        stream_mode=["updates", "custom", "messages-tuple"],
        context={"aggregator_kwargs": {"stop": ["###"]}},
    ):
        parts.append(part)
    errors = [p.data for p in parts if p.event == "error"]
    assert not errors, errors

    updates = [p.data for p in parts if p.event == "updates"]
    assert any("aggregate" in update for update in updates)
    progress = [p.data["moa_event"] for p in parts if p.event == "custom"]
    assert "layer_done" in progress and "aggregation_finished" in progress

    tokens = [
        message["content"]
        for p in parts
        if p.event == "messages"
        for message, metadata in [p.data]
        if "moa:aggregator" in metadata.get("tags", [])
    ]
    assert len(tokens) > 2 and "".join(tokens) == ANSWER

    # context reached the aggregator's model call, and only the aggregator's.
    assert upstream.requests_for("agg")[-1].params.get("stop") == ["###"]
    assert "stop" not in upstream.requests_for("p1")[-1].params

    state = await client.threads.get_state(thread["thread_id"])
    values: Any = state["values"]
    assert [m["type"] for m in values["messages"]] == ["human", "ai"]
    assert values["messages"][-1]["content"] == ANSWER
    assert [(p["proposer"], p["status"], p["text"]) for p in values["proposals"]] == [
        ("p1", "answered", "Paris."),
        ("p2", "answered", "It is Paris."),
    ]


async def stream_parts(client: LangGraphClient, **context: Any) -> list[Any]:
    thread = await client.threads.create()
    parts = [
        part
        async for part in client.runs.stream(
            thread["thread_id"],
            "moa",
            input={"messages": [{"role": "user", "content": QUESTION}]},
            stream_mode=["custom", "messages-tuple"],
            context=context,
        )
    ]
    assert not [p.data for p in parts if p.event == "error"]
    return parts


def message_text(parts: list[Any]) -> str:
    """What a chat UI shows: every token of the messages stream, whoever wrote it."""
    return "".join(p.data[0]["content"] for p in parts if p.event == "messages")


async def test_chat_clients_see_only_the_answer_and_proposals_arrive_as_custom_events(
    client: LangGraphClient,
) -> None:
    parts = await stream_parts(client)
    assert message_text(parts) == ANSWER
    custom = [p.data for p in parts if p.event == "custom"]
    deltas: dict[int, str] = {}
    for event in custom:
        if event["moa_event"] == "proposal_delta":
            deltas[event["index"]] = deltas.get(event["index"], "") + event["text"]
    finished = {e["index"]: e for e in custom if e["moa_event"] == "proposal_finished"}
    assert deltas == {0: "Paris.", 1: "It is Paris."}
    assert {i: e["text"] for i, e in finished.items()} == deltas
    assert finished[1]["proposer"] == "p2" and finished[1]["attempts"] == 1

    with_proposers = message_text(await stream_parts(client, stream_proposers=True))
    assert "Paris." in with_proposers.removesuffix(ANSWER) and with_proposers.endswith(ANSWER)


async def test_threads_keep_the_conversation(client: LangGraphClient) -> None:
    thread = await client.threads.create()
    for question in (QUESTION, "And of Italy?"):
        result: Any = await client.runs.wait(
            thread["thread_id"], "moa", input={"messages": [{"role": "user", "content": question}]}
        )
        assert result["messages"][-1]["content"] == ANSWER
    state = await client.threads.get_state(thread["thread_id"])
    values: Any = state["values"]
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "human", "ai"]
    assert len(values["proposals"]) == 2  # the last run's proposals only


def test_served_recipe_docstring_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module builds its graph at import; this environment has no local model installed (a
    # local mixture now fails at construction), so it serves a remote preset, never called.
    monkeypatch.setenv("MOA_GRAPH_PRESET", "together")
    monkeypatch.setenv("TOGETHER_API_KEY", "placeholder-never-sent")
    import moa_graph.serve.langgraph_app as app

    result = doctest.testmod(app, verbose=False)
    assert result.failed == 0 and result.attempted > 0


async def test_threads_are_kept_in_our_postgres(
    postgres_server_url: str, postgres_url: str
) -> None:
    from moa_graph.checkpoints import async_checkpointer

    client = get_client(url=postgres_server_url)
    try:
        thread = await client.threads.create()
        result: Any = await client.runs.wait(
            thread["thread_id"], "moa", input={"messages": [{"role": "user", "content": QUESTION}]}
        )
        assert result["messages"][-1]["content"] == ANSWER
    finally:
        await client.http.client.aclose()

    # read back from the database by LangGraph's own saver, not through the server
    async with async_checkpointer(postgres_url) as saver:
        saved = await saver.aget_tuple({"configurable": {"thread_id": thread["thread_id"]}})
    assert saved is not None
    messages = saved.checkpoint["channel_values"]["messages"]
    assert [m.type for m in messages] == ["human", "ai"] and messages[-1].content == ANSWER


async def test_the_postgres_checkpointer_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOA_GRAPH_PRESET", "together")
    monkeypatch.setenv("TOGETHER_API_KEY", "placeholder-never-sent")
    monkeypatch.delenv("MOA_GRAPH_CHECKPOINT", raising=False)
    from moa_graph.serve.langgraph_app import served_checkpointer

    with pytest.raises(ValueError, match="MOA_GRAPH_CHECKPOINT is not set"):
        async with served_checkpointer():
            pass
