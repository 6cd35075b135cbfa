"""``serve --checkpoint``: a request carrying an ``Idempotency-Key`` keeps its run, so a retry
pays no proposer twice, on the same server (the client went away) or on another server process
sharing the PostgreSQL store (the first one was killed mid-layer).

Requests go OpenAI client -> MoA server -> ChatOpenAI proposers -> the loopback scripted
server, which counts every call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from moa_graph.serve.openai_app import MoAServer
from moa_graph.testing import ModelScript, OpenAICompatibleServer
from tests.test_serve import ANSWER, NAME, USER, mixture

ROOT = Path(__file__).resolve().parents[1]
KEY_HEADER = "Idempotency-Key"
WAIT_S = 20.0


@pytest.fixture
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="Paris."),
        "p2": ModelScript(reply="It is Paris.", faults=["hang"]),  # until the test says
        "agg": ModelScript(reply=ANSWER),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


def calls(upstream: OpenAICompatibleServer) -> Counter[str]:
    return Counter(record.model for record in upstream.requests())


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def post(base_url: str, key: str | None, stream: bool = False, **body: Any) -> httpx.Response:
    headers = {KEY_HEADER: key} if key is not None else {}
    payload = {"model": NAME, "messages": USER, "stream": stream, **body}
    return httpx.post(f"{base_url}/chat/completions", json=payload, headers=headers, timeout=20)


@pytest.mark.parametrize("stream", [False, True])
def test_a_retry_after_the_client_left_pays_no_proposer_twice(
    upstream: OpenAICompatibleServer, stream: bool
) -> None:
    with MoAServer(mixture(upstream), model_name=NAME, checkpoint="memory") as served:
        with (
            openai.OpenAI(
                base_url=served.base_url, api_key="x", max_retries=0, timeout=1.0
            ) as client,
            pytest.raises(openai.APITimeoutError),
        ):
            client.chat.completions.create(
                model=NAME, messages=USER, stream=stream, extra_headers={KEY_HEADER: "order-7"}
            )  # type: ignore[call-overload]
        wait_for(lambda: calls(upstream) == {"p1": 1, "p2": 1}, "the first run's calls")
        time.sleep(0.2)  # p1's answer is saved in the background
        upstream.set_script("p2", ModelScript(reply="It is Paris."))
        with openai.OpenAI(base_url=served.base_url, api_key="x", max_retries=0) as client:
            reply = client.chat.completions.create(
                model=NAME, messages=USER, stream=stream, extra_headers={KEY_HEADER: "order-7"}
            )  # type: ignore[call-overload]
            text = (
                "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
                if stream
                else reply.choices[0].message.content
            )
    assert text == ANSWER
    assert calls(upstream) == {"p1": 1, "p2": 2, "agg": 1}  # p1 not paid again


def test_a_finished_run_is_answered_again_without_calls(upstream: OpenAICompatibleServer) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris."))
    with MoAServer(mixture(upstream), model_name=NAME, checkpoint="memory") as served:
        first = post(served.base_url, "order-8")
        before = calls(upstream)
        again = post(served.base_url, "order-8", stream=True)
        other = post(served.base_url, "order-9")  # another key: another run
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json()["choices"][0]["message"]["content"] == ANSWER
    assert ANSWER.split()[0] in again.text and "[DONE]" in again.text
    assert before == {"p1": 1, "p2": 1, "agg": 1}
    assert calls(upstream) == {"p1": 2, "p2": 2, "agg": 2}


def test_a_key_reused_for_another_conversation_is_422(upstream: OpenAICompatibleServer) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris."))
    with MoAServer(mixture(upstream), model_name=NAME, checkpoint="memory") as served:
        assert post(served.base_url, "order-1").status_code == 200
        other = [{"role": "user", "content": "And of Italy?"}]
        reused = post(served.base_url, "order-1", messages=other)
        too_long = post(served.base_url, "k" * 256)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "invalid_idempotency_key"
    assert calls(upstream) == {"p1": 1, "p2": 1, "agg": 1}  # refused before any call


def test_without_a_checkpoint_the_key_is_reported_ignored(
    upstream: OpenAICompatibleServer,
) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris."))
    with MoAServer(mixture(upstream), model_name=NAME) as served:
        response = post(served.base_url, "order-1", temperature=0.3)
    assert response.status_code == 200
    assert response.headers["X-MoA-Ignored-Params"] == f"temperature,{KEY_HEADER}"


# -- two server processes sharing PostgreSQL; the first is killed mid-layer --------------------


def start_serve(recipe: Path, port: int, checkpoint: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", "import sys; from moa_graph.cli import main; sys.exit(main())",
               "serve", "--config", str(recipe), "--port", str(port), "--model-name", NAME,
               "--checkpoint", checkpoint]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_GRAPH_")}
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def wait_up(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90  # the process imports LangChain first
    while True:
        assert process.poll() is None, f"moa-graph serve exited: {process.stderr}"
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "moa-graph serve did not start"
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_another_server_finishes_the_run_of_a_killed_one(
    upstream: OpenAICompatibleServer, postgres_database: str, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.toml"
    model = f'base_url = "{upstream.base_url}", api_key = "sk-up"'
    recipe.write_text(
        f'proposers = [{{model = "openai:p1", {model}}}, {{model = "openai:p2", {model}}}]\n'
        f'aggregator = {{model = "openai:agg", {model}}}\n'
        "layers = 2\nmax_retries = 0\n"
    )
    ports = free_port(), free_port()
    first, second = (start_serve(recipe, port, postgres_database) for port in ports)
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    try:
        for url, process in zip(urls, (first, second), strict=True):
            wait_up(url, process)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, urls[0], "order-42")
            wait_for(lambda: calls(upstream) == {"p1": 1, "p2": 1}, "layer 1's calls")
            time.sleep(0.5)  # p1's answer is saved in the background
            first.send_signal(signal.SIGKILL)  # the server dies under the request
            with pytest.raises(httpx.TransportError):
                pending.result()
        upstream.set_script("p2", ModelScript(reply="It is Paris."))
        retried = post(urls[1], "order-42")
    finally:
        for process in (first, second):
            process.kill()
            process.wait(10)
            if process.stderr:
                process.stderr.close()
    assert retried.status_code == 200, retried.text
    assert retried.json()["choices"][0]["message"]["content"] == ANSWER
    assert calls(upstream) == {"p1": 1, "p2": 2, "agg": 1}  # p1 answered once, paid once
