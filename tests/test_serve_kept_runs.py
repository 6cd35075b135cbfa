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

from moa_graph.serve.openai_app import MoAServer, create_app
from moa_graph.testing import ModelScript, OpenAICompatibleServer
from tests.test_durable import saved_proposals, stored_proposals, wait_until
from tests.test_serve import ANSWER, NAME, USER, mixture
from tests.test_serve_hardening import free_port

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 5
KEY_HEADER = "Idempotency-Key"


def thread_of(key: str) -> Any:
    """The config of the thread a key's run is kept on."""
    return {"configurable": {"thread_id": f"idempotency:{NAME}:{key}"}}


def saved_in(served: MoAServer, key: str) -> list[str]:
    """The proposers whose answers the server saved for ``key``'s run."""
    runs = served._endpoints.kept_runs
    assert runs is not None
    return saved_proposals(runs._saver, thread_of(key))


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
        wait_until(lambda: calls(upstream) == {"p1": 1, "p2": 1}, "the first run's calls")
        wait_until(lambda: saved_in(served, "order-7") == ["p1"], "p1's answer saved")
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


def test_a_key_whose_run_is_going_on_is_409_with_retry_after(
    upstream: OpenAICompatibleServer,
) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris.", ttft=2.0))  # a slow run
    with MoAServer(mixture(upstream), model_name=NAME, checkpoint="memory") as served:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, served.base_url, "order-5")
            wait_until(lambda: calls(upstream) == {"p1": 1, "p2": 1}, "the first run's calls")
            again = post(served.base_url, "order-5")  # while the first run goes on
            assert first.result().status_code == 200
        after = post(served.base_url, "order-5")  # the run ended: its answer, no call
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "idempotency_key_in_use"
    assert int(again.headers["Retry-After"]) >= 1
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == ANSWER
    assert calls(upstream)["p1"] == 1  # the refused request paid nothing


def test_without_a_checkpoint_the_key_is_reported_ignored(
    upstream: OpenAICompatibleServer,
) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris."))
    with MoAServer(mixture(upstream), model_name=NAME) as served:
        response = post(served.base_url, "order-1", temperature=0.3)
    assert response.status_code == 200
    assert response.headers["X-MoA-Ignored-Params"] == f"temperature,{KEY_HEADER}"


# -- two server processes sharing PostgreSQL; the first is killed mid-layer --------------------


def start_serve(recipe: Path, port: int, checkpoint: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "import sys; from moa_graph.cli import main; sys.exit(main())",
               "serve", "--config", str(recipe), "--port", str(port), "--model-name", NAME,
               "--checkpoint", checkpoint, "--lease-seconds", str(LEASE_S)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_GRAPH_")}
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_up(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90  # the process imports LangChain first
    while True:
        assert process.poll() is None, f"moa-graph serve exited:\n{log.read_text()}"
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"moa-graph serve did not start:\n{log.read_text()}"
        time.sleep(0.2)


def test_another_server_finishes_the_run_of_a_killed_one(
    upstream: OpenAICompatibleServer, postgres_database: str, tmp_path: Path
) -> None:
    """Two ``moa-graph serve`` processes share a PostgreSQL store; the first is SIGKILLed while
    its request waits on p2. Until the dead worker's lease lapses the key is 409 everywhere;
    then the retry to the second server finishes the run, paying p1 nothing."""
    recipe = tmp_path / "recipe.toml"
    model = f'base_url = "{upstream.base_url}", api_key = "sk-up"'
    recipe.write_text(
        f'proposers = [{{model = "openai:p1", {model}}}, {{model = "openai:p2", {model}}}]\n'
        f'aggregator = {{model = "openai:agg", {model}}}\n'
        "layers = 2\nmax_retries = 0\n"
    )
    ports, logs = (free_port(), free_port()), (tmp_path / "first.log", tmp_path / "second.log")
    first, second = (
        start_serve(recipe, port, postgres_database, log)
        for port, log in zip(ports, logs, strict=True)
    )
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    try:
        for url, process, log in zip(urls, (first, second), logs, strict=True):
            wait_up(url, process, log)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, urls[0], "order-42")
            wait_until(lambda: calls(upstream) == {"p1": 1, "p2": 1}, "layer 1's calls")
            wait_until(
                lambda: stored_proposals(postgres_database, thread_of("order-42")) == ["p1"],
                "p1's answer saved",
            )
            killed_at = time.monotonic()
            first.send_signal(signal.SIGKILL)  # the server dies under the request
            with pytest.raises(httpx.TransportError):
                pending.result()
        upstream.set_script("p2", ModelScript(reply="It is Paris."))
        too_soon = post(urls[1], "order-42")
        within_lease = time.monotonic() - killed_at < LEASE_S - 1  # unless the machine stalled
        time.sleep(max(0.0, LEASE_S + 0.5 - (time.monotonic() - killed_at)))
        retried = post(urls[1], "order-42")
    finally:
        for process in (first, second):
            process.kill()
            process.wait(10)
    if within_lease:  # the dead worker's lease still holds the key
        assert too_soon.status_code == 409, too_soon.text
        assert int(too_soon.headers["Retry-After"]) <= LEASE_S
    assert retried.status_code == 200, retried.text
    assert retried.json()["choices"][0]["message"]["content"] == ANSWER
    assert calls(upstream) == {"p1": 1, "p2": 2, "agg": 1}  # p1 answered once, paid once


def test_an_unreachable_store_stops_the_server_from_starting(
    upstream: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://moa:pw-not-shown@127.0.0.1:{free_port()}/runs"  # nothing listens
    server = MoAServer(mixture(upstream), model_name=NAME, checkpoint=url)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start()
    assert "cannot open the run store postgresql://moa:***@127.0.0.1" in caplog.text
    assert "pw-not-shown" not in caplog.text


async def test_a_mounted_app_answers_503_while_the_store_is_unreachable(
    upstream: OpenAICompatibleServer,
) -> None:
    upstream.set_script("p2", ModelScript(reply="It is Paris."))
    url = f"postgresql://moa@127.0.0.1:{free_port()}/runs"
    app = create_app(mixture(upstream), model_name=NAME, checkpoint=url)  # no lifespan: lazy
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://moa") as client:
        body = {"model": NAME, "messages": USER}
        first = await client.post("/v1/chat/completions", json=body, headers={KEY_HEADER: "k"})
        second = await client.post("/v1/chat/completions", json=body, headers={KEY_HEADER: "k"})
        unkeyed = await client.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 503
    assert first.json()["error"]["code"] == "store_unavailable"
    assert unkeyed.status_code == 200  # requests without a key need no store
    assert calls(upstream) == {"p1": 1, "p2": 1, "agg": 1}


# -- leases on PostgreSQL, directly -----------------------------------------------------------


async def test_a_worker_takes_back_its_own_lease_and_no_other_worker_can(
    postgres_database: str,
) -> None:
    from moa_graph.serve.kept_runs import KeptRuns, KeyInUseError

    first, second = KeptRuns(postgres_database), KeptRuns(postgres_database)
    try:
        await first.open()
        await second.open()
        await first._claim("t")  # say its release failed: the row stays
        await first._claim("t")  # its own retry is not locked out
        with pytest.raises(KeyInUseError) as refused:
            await second._claim("t")
        assert 1 <= refused.value.retry_after <= 30
    finally:
        await first.close()
        await second.close()


async def test_a_run_whose_lease_another_worker_took_is_stopped(postgres_database: str) -> None:
    import asyncio

    import psycopg

    from moa_graph.serve.kept_runs import KeptRuns

    runs = KeptRuns(postgres_database, lease_seconds=1.5)
    try:
        await runs.open()
        with pytest.raises(asyncio.CancelledError):
            async with runs.leased("t"):
                async with await psycopg.AsyncConnection.connect(
                    postgres_database, autocommit=True
                ) as other:  # another worker holds the key now (this one was too slow)
                    await other.execute("UPDATE moa_graph_leases SET owner = 'other', "
                                        "expires = now() + interval '1 minute'")  # fmt: skip
                await asyncio.sleep(5)  # the run goes on until its next renewal finds out
    finally:
        await runs.close()
