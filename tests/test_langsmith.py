"""LangSmith: every proposer and aggregator call is a named, tagged run nested in its graph step.

Checked twice: with a run collector (the callback tree), and with the real ``LangChainTracer``
sending to a loopback LangSmith collector at ``LANGSMITH_ENDPOINT`` (real ingestion requests).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tracers.langchain import LangChainTracer, wait_for_all_tracers
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from moa_graph import create_moa_graph
from tests.fakes import ScriptedChatModel

PLANTED_KEY = "lsv2_pt_planted0000000000000000000000_test"


def mixture() -> Any:
    proposers = [ScriptedChatModel(reply=r, model_name=f"m-{r}") for r in ("A", "B")]
    aggregator = ScriptedChatModel(reply="end", model_name="m-end")
    return create_moa_graph(proposers, aggregator=aggregator, layers=3).compile()


def expect_moa_runs(runs: dict[str, dict[str, Any]]) -> None:
    """Check names, tags, metadata and nesting of the MoA calls in ``runs`` (by run id)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        by_name.setdefault(run["name"], []).append(run)
    for layer in (1, 2):
        for index, proposer in enumerate(("m-A", "m-B")):
            (run,) = by_name[f"proposer {layer}.{index + 1}: {proposer}"]
            assert {"moa:proposer", f"moa:layer:{layer}"} <= set(run["tags"])
            metadata = run["metadata"]
            assert (metadata["moa_layer"], metadata["moa_index"]) == (layer, index)
            assert (metadata["moa_proposer"], metadata["moa_model"]) == (proposer, proposer)
            parent = runs[run["parent_run_id"]]
            assert parent["name"] == "propose"
            assert parent["metadata"]["langgraph_step"] == 2 * layer  # one superstep a layer
            assert runs[parent["parent_run_id"]]["parent_run_id"] is None  # the graph's run
    (aggregator,) = by_name["aggregator: m-end"]
    assert {"moa:aggregator", "moa:layer:3"} <= set(aggregator["tags"])
    assert aggregator["metadata"]["moa_layer"] == 3
    assert aggregator["metadata"]["moa_model"] == "m-end"
    assert runs[aggregator["parent_run_id"]]["name"] == "aggregate"
    llm_calls = [r for r in runs.values() if r["run_type"] == "llm"]
    assert len(llm_calls) == 5  # four proposer calls and the aggregator's


def test_run_collector_sees_every_call_nested_and_tagged() -> None:
    collector = RunCollectorCallbackHandler()
    mixture().invoke({"messages": [HumanMessage("Why?")]}, {"callbacks": [collector]})
    runs: dict[str, dict[str, Any]] = {}
    stack = list(collector.traced_runs)
    while stack:
        run = stack.pop()
        runs[str(run.id)] = {
            "name": run.name,
            "run_type": run.run_type,
            "tags": run.tags or [],
            "metadata": (run.extra or {}).get("metadata", {}),
            "parent_run_id": str(run.parent_run_id) if run.parent_run_id else None,
        }
        stack.extend(run.child_runs)
    expect_moa_runs(runs)


class LangSmithCollector(ThreadingHTTPServer):
    """A loopback stand-in for the LangSmith API: records ingested runs and raw bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.runs: dict[str, dict[str, Any]] = {}
        self.bodies: list[bytes] = []
        self.api_keys: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, operation: str, run: dict[str, Any]) -> None:
        with self.lock:
            stored = self.runs.setdefault(str(run["id"]), {})
            stored.update({k: v for k, v in run.items() if v is not None or k not in stored})


class _Handler(BaseHTTPRequestHandler):
    server: LangSmithCollector

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        self.server.bodies.append(body)
        self.server.api_keys.add(self.headers.get("x-api-key", ""))
        return body

    def do_GET(self) -> None:
        self._reply(200, {} if self.path.startswith("/info") else {"detail": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/runs/multipart":
            for operation, run in _multipart_runs(self.headers["Content-Type"], body):
                self.server.record(operation, run)
        elif self.path == "/runs/batch":
            batch = json.loads(body)
            for operation in ("post", "patch"):
                for run in batch.get(operation) or []:
                    self.server.record(operation, run)
        elif self.path == "/runs":
            self.server.record("post", json.loads(body))
        else:
            self._reply(404, {"detail": "not found"})
            return
        self._reply(202, {})

    def do_PATCH(self) -> None:
        run = json.loads(self._body())
        run["id"] = self.path.rsplit("/", 1)[-1]
        self.server.record("patch", run)
        self._reply(200, {})


def _multipart_runs(content_type: str, body: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """Runs of a ``/runs/multipart`` body: parts ``post.<id>`` and ``post.<id>.<field>``."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for part in message.iter_parts():
        operation, run_id, *field = part.get_param("name", header="content-disposition").split(".")
        value = json.loads(part.get_payload(decode=True))
        run = runs.setdefault((operation, run_id), {"id": run_id})
        run.update({field[0]: value} if field else value)
    for (operation, _), run in runs.items():
        yield operation, run


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[LangSmithCollector]:
    from langsmith import utils as ls_utils

    server = LangSmithCollector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("LANGCHAIN_ENDPOINT", "LANGCHAIN_API_KEY", "LANGSMITH_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", server.url)
    monkeypatch.setenv("LANGSMITH_API_KEY", PLANTED_KEY)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    ls_utils.get_env_var.cache_clear()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        ls_utils.get_env_var.cache_clear()


def test_langchain_tracer_sends_every_call_to_the_langsmith_endpoint(
    collector: LangSmithCollector,
) -> None:
    from langsmith import Client

    client = Client()  # from LANGSMITH_ENDPOINT and LANGSMITH_API_KEY
    assert client.api_url == collector.url
    tracer = LangChainTracer(client=client, project_name="moa-graph-tests")
    mixture().invoke({"messages": [HumanMessage("Why?")]}, {"callbacks": [tracer]})
    wait_for_all_tracers()
    client.flush()

    runs = {
        run_id: {
            "name": run["name"],
            "run_type": run["run_type"],
            "tags": run.get("tags") or [],
            "metadata": (run.get("extra") or {}).get("metadata", {}),
            "parent_run_id": run.get("parent_run_id"),
        }
        for run_id, run in collector.runs.items()
    }
    expect_moa_runs(runs)
    assert all(run.get("end_time") for run in collector.runs.values())  # every run was closed
    (root,) = [r for r in collector.runs.values() if r.get("parent_run_id") is None]
    assert {r["trace_id"] for r in collector.runs.values()} == {root["id"]}
    assert collector.api_keys == {PLANTED_KEY}  # the key travels as a header only ...
    assert not any(PLANTED_KEY.encode() in body for body in collector.bodies)  # ... never a body
