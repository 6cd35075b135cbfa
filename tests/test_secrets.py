"""API keys are held as secrets: a planted key never shows in logs, errors, traces, reprs, the
CLI's ``--json`` output or stored checkpoints.

Each test plants a fresh key and has the server echo it in an error message (as providers do
with a wrong key), so redaction has real work to do. Every grep can fail: the key is shown to
reach the server and to come back in the raw error, and each place searched is shown to hold
the masked message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumps
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StreamMode
from pydantic import SecretStr

from moa_graph import (
    AggregatorError,
    ChatMixtureOfAgents,
    MoAError,
    ProposalsFailedError,
    ProposerSpec,
    create_moa_graph,
)
from moa_graph.cli import main
from moa_graph.redact import MASK
from moa_graph.testing import Fault, FaultSpec, ModelScript, OpenAICompatibleServer

OK, LEAKY, AGGREGATOR, LEAKY_AGGREGATOR = "ok", "leaky", "agg", "leaky-agg"
MASKED = f"bad key {MASK}"
"""The echoed message as it must appear once the key is masked."""
LOGGERS = ("moa_graph", "openai", "httpx", "httpcore", "langchain", "langchain_core", "langgraph")


@pytest.fixture(params=["sk-planted-", "planted"], ids=["key-shaped", "not-key-shaped"])
def key(request: pytest.FixtureRequest) -> str:
    """A fresh key; one not shaped like an API key is masked only because it is known."""
    return f"{request.param}{secrets.token_hex(16)}"


@pytest.fixture
def server(key: str) -> Iterator[OpenAICompatibleServer]:
    """``ok`` and ``agg`` answer; ``leaky`` and ``leaky-agg`` fail with a 401 echoing the key."""
    echo = FaultSpec(Fault.HTTP_401, message=f"bad key {key}")
    scripts = {
        OK: ModelScript(reply="Golden Gate Park"),
        LEAKY: ModelScript(reply="unused", faults=[echo] * 4),
        AGGREGATOR: ModelScript(reply="Visit the park."),
        LEAKY_AGGREGATOR: ModelScript(reply="unused", faults=[echo] * 4),
    }
    with OpenAICompatibleServer(scripts=scripts) as running:
        yield running


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record, DEBUG included, of the package and the client libraries."""
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


class RawErrors(BaseCallbackHandler):
    """Keeps the text of every model error as the client raised it (before any redaction)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(str(error))


def spec(server: OpenAICompatibleServer, model: str, key: str) -> ProposerSpec:
    return ProposerSpec(model=f"openai:{model}", base_url=server.base_url, api_key=SecretStr(key))


def mixture(
    server: OpenAICompatibleServer,
    key: str,
    *,
    aggregator: str = AGGREGATOR,
    saver: BaseCheckpointSaver[Any] | None = None,
    min_proposals: int = 1,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """MoA-Lite with an answering and a leaking proposer, the key given in every spec."""
    proposers = [spec(server, OK, key), spec(server, LEAKY, key)]
    graph = create_moa_graph(
        proposers,
        aggregator=spec(server, aggregator, key),
        layers=2,
        max_retries=0,
        min_proposals=min_proposals,
    )
    return graph.compile(checkpointer=saver)


def assert_hidden(key: str, where: str, text: str | bytes, *, masked: bool = True) -> None:
    """The key is not in ``text``; with ``masked``, the masked message is (so it got there)."""
    data = text.encode() if isinstance(text, str) else text
    assert key.encode() not in data, f"the key leaked into {where}"
    if masked:
        assert MASKED.encode() in data, f"{where} does not hold the masked error message"


def assert_key_used_and_echoed(server: OpenAICompatibleServer, raw: RawErrors, key: str) -> None:
    """Sanity: the key was sent on every call and came back in the raw error."""
    assert server.requests() and all(r.auth_present for r in server.requests())
    assert any(key in error for error in raw.errors), raw.errors


def walk(run: Run) -> Iterator[Run]:
    yield run
    for child in run.child_runs:
        yield from walk(child)


def traced(collector: RunCollectorCallbackHandler) -> str:
    """Every traced run, nested ones included, as JSON."""
    runs = [run for top in collector.traced_runs for run in walk(top)]
    assert runs, "nothing was traced"
    return "\n".join(json.dumps(run.model_dump(), default=repr) for run in runs)


def stored_bytes(value: Any) -> bytes:
    """Everything an in-memory saver holds (serialised checkpoints and writes), as bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return b"\n".join(stored_bytes(k) + b"=" + stored_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b"\n".join(stored_bytes(item) for item in value)
    return repr(value).encode()


def in_memory_bytes(saver: InMemorySaver) -> bytes:
    return b"\n".join(
        stored_bytes(dict(part)) for part in (saver.storage, saver.writes, saver.blobs)
    )


def sqlite_bytes(db: Path) -> bytes:
    """The database's files as stored on disk (the write-ahead log included)."""
    files = [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    return b"".join(path.read_bytes() for path in files if path.exists())


def thread(name: str, *callbacks: BaseCallbackHandler) -> RunnableConfig:
    return {"configurable": {"thread_id": name}, "callbacks": list(callbacks)}


# -- runs, logs and checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_failed_proposer_leaves_the_key_out_of_results_logs_and_checkpoints(
    server: OpenAICompatibleServer,
    key: str,
    logs: pytest.LogCaptureFixture,
    tmp_path: Path,
    store: str,
) -> None:
    db = tmp_path / "checkpoints.sqlite"
    with contextlib.closing(sqlite3.connect(db, check_same_thread=False)) as conn:
        saver = SqliteSaver(conn) if store == "sqlite" else InMemorySaver()
        graph = mixture(server, key, saver=saver)
        raw = RawErrors()
        question = {"messages": [("user", "Fun in SF?")]}
        result = graph.invoke(question, thread("invoke", raw))
        modes: list[StreamMode] = ["custom", "values"]
        parts = list(graph.stream(question, thread("stream", raw), stream_mode=modes))
        threads = [graph.get_state_history(thread(name)) for name in ("invoke", "stream")]
        history = [snapshot.values for snapshots in threads for snapshot in snapshots]
    stored = in_memory_bytes(saver) if isinstance(saver, InMemorySaver) else sqlite_bytes(db)

    assert_key_used_and_echoed(server, raw, key)
    assert result["messages"][-1].text == "Visit the park."
    assert [(p["proposer"], p["status"]) for p in result["proposals"]] == [
        (OK, "answered"),
        (LEAKY, "failed"),
    ]
    assert_hidden(key, "the result", json.dumps(result, default=repr))
    assert_hidden(key, "the streamed progress and values", json.dumps(parts, default=repr))
    assert_hidden(key, "the state history", json.dumps(history, default=repr))
    assert_hidden(key, "the logs", logs.text + "\n".join(r.getMessage() for r in logs.records))
    assert_hidden(key, f"the {store} checkpoints", stored)


# -- errors ---------------------------------------------------------------------------------------


def failing_run(
    server: OpenAICompatibleServer, key: str, failure: str, saver: BaseCheckpointSaver[Any]
) -> tuple[MoAError, RawErrors]:
    """Fail a run: too few proposals (``min_proposals=2``) or the aggregator's 401."""
    graph = (
        mixture(server, key, min_proposals=2, saver=saver)
        if failure == "proposals"
        else mixture(server, key, aggregator=LEAKY_AGGREGATOR, saver=saver)
    )
    raw = RawErrors()
    expected = ProposalsFailedError if failure == "proposals" else AggregatorError
    with pytest.raises(expected) as caught:
        graph.invoke({"messages": [("user", "Fun in SF?")]}, thread("t1", raw))
    return caught.value, raw


@pytest.mark.parametrize("failure", ["proposals", "aggregator"])
def test_errors_and_their_checkpoints_leave_the_key_out(
    server: OpenAICompatibleServer,
    key: str,
    logs: pytest.LogCaptureFixture,
    tmp_path: Path,
    failure: str,
) -> None:
    db = tmp_path / "checkpoints.sqlite"
    with contextlib.closing(sqlite3.connect(db, check_same_thread=False)) as conn:
        error, raw = failing_run(server, key, failure, SqliteSaver(conn))

    assert_key_used_and_echoed(server, raw, key)
    assert_hidden(key, "str(error)", str(error))
    assert_hidden(key, "repr(error)", repr(error))
    assert_hidden(key, "error.args", json.dumps(error.args, default=repr))
    attributes = json.dumps(vars(error), default=repr)
    assert_hidden(key, "the error's attributes", attributes, masked=failure == "proposals")
    assert_hidden(key, "the logs", logs.text)
    assert_hidden(key, "the SQLite checkpoints", sqlite_bytes(db))


@pytest.mark.parametrize("failure", ["proposals", "aggregator"])
def test_error_tracebacks_leave_the_key_out(
    server: OpenAICompatibleServer, key: str, failure: str
) -> None:
    """What ``logger.exception`` would print: the error with its whole chain of causes."""
    error, raw = failing_run(server, key, failure, InMemorySaver())
    assert_key_used_and_echoed(server, raw, key)
    assert_hidden(key, "the traceback", "".join(traceback.format_exception(error)))


# -- traces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["graph", "chat model"])
def test_traces_leave_the_key_out(server: OpenAICompatibleServer, key: str, entry: str) -> None:
    collector = RunCollectorCallbackHandler()
    if entry == "graph":
        raw = RawErrors()
        mixture(server, key).invoke({"messages": [("user", "Q?")]}, thread("t1", raw, collector))
        assert_key_used_and_echoed(server, raw, key)
    else:
        moa = ChatMixtureOfAgents(
            proposers=[spec(server, OK, key), spec(server, LEAKY, key)],
            aggregator=spec(server, AGGREGATOR, key),
            layers=2,
            max_retries=0,
        )
        assert moa.invoke("Q?", {"callbacks": [collector]}).text == "Visit the park."
    assert_hidden(key, "the traces", traced(collector))


# -- reprs ---------------------------------------------------------------------------------------


def test_reprs_leave_the_key_out(server: OpenAICompatibleServer, key: str) -> None:
    proposers = [spec(server, OK, key), spec(server, LEAKY, key)]
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=spec(server, AGGREGATOR, key))
    graph = moa.graph
    held = [slot.model.openai_api_key for slot in moa.plan.proposer_layers[0]]  # type: ignore[attr-defined]
    assert [secret.get_secret_value() for secret in held] == [key, key]  # there to be shown
    shown = {
        "repr(chat model)": repr(moa),
        "str(chat model)": str(moa),
        "chat model fields": json.dumps(moa.model_dump(), default=repr),
        "chat model serialised": dumps(moa),
        "repr(spec)": repr(proposers[0]) + str(proposers[0]),
        "repr(plan)": repr(moa.plan) + str(moa.plan),
        "repr(graph)": repr(graph) + str(graph),
        "graph drawing": graph.get_graph().draw_mermaid(),
        "compiled nodes": "".join(repr(n) + str(n) + repr(vars(n)) for n in graph.nodes.values()),
        "builder nodes": repr(graph.builder.nodes) + str(graph.builder.nodes),
    }
    for where, text in shown.items():
        assert_hidden(key, where, text, masked=False)
    assert "api_key=SecretStr('**********')" in repr(moa)


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregator", [AGGREGATOR, LEAKY_AGGREGATOR])
def test_cli_output_leaves_the_key_out(
    server: OpenAICompatibleServer,
    key: str,
    logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    aggregator: str,
) -> None:
    """The key comes from ``OPENAI_API_KEY``, as a CLI user gives it."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    argv = ["ask", "--proposer", f"openai:{OK}", "--proposer", f"openai:{LEAKY}"]
    argv += ["--aggregator", f"openai:{aggregator}", "--layers", "2", "--json", "Fun in SF?"]

    code = main(argv)
    out, err = capsys.readouterr()

    assert server.requests() and all(r.auth_present for r in server.requests())
    assert_hidden(key, "stderr", err)
    assert_hidden(key, "the logs", logs.text)
    if aggregator == AGGREGATOR:
        assert code == 0
        result = json.loads(out)
        assert result["proposals"][1]["error"].endswith(MASKED)
        assert_hidden(key, "the --json output", out)
    else:
        assert code == 1 and out == ""
        assert err.strip().splitlines()[-1].endswith(MASKED)
