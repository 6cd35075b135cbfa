"""A scripted OpenAI-compatible HTTP server for offline tests (Starlette on uvicorn).

Serves ``POST /v1/chat/completions`` (plain and SSE streaming) and
``GET /v1/models`` on 127.0.0.1 with per-model scripted replies, latencies and
faults (see :mod:`moa_graph.testing.faults`), so tests and benchmarks exercise
the real ``openai`` / ``langchain_openai`` / ``langchain_together`` client code.

Control endpoints (used by :class:`~moa_graph.testing.process.ServerProcess`):
``GET /_log`` returns the request log as JSON, ``POST /_reset`` clears it,
``POST /_scripts`` sets scripts from their JSON form
(``{"scripts": {model: {...}}, "default": {...}, "replace": false}``).

Run in a separate process (prints ``{"port": ..., "base_url": ...}`` once
listening)::

    python -m moa_graph.testing.openai_server --port 0 \\
        --scripts-json '{"gpt-x": {"reply": "hi", "ttft": 0.1}}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from moa_graph.serve import openai_wire
from moa_graph.serve.asgi import ClientWatch, body_message, routing_error, start_message
from moa_graph.serve.runner import Connections, UvicornServer, reset_connection
from moa_graph.testing import _wire
from moa_graph.testing.faults import HTTP_ERRORS, Fault, FaultLike, FaultSpec
from moa_graph.testing.records import RequestLogQueries, RequestRecord
from moa_graph.testing.scripts import (
    ModelScript,
    ScriptedLatency,
    count_tokens,
    default_reply,
    prompt_tokens,
    tokenize,
)

_SECRET_PARAMS = frozenset({"api_key", "apikey", "api-key", "authorization", "x-api-key"})
_AUTH_HEADERS = ("authorization", "api-key", "x-api-key")
_JSON = (("Content-Type", "application/json"),)


class OpenAICompatibleServer(UvicornServer, RequestLogQueries):
    """Scripted OpenAI-compatible server on 127.0.0.1, run on its own loop thread.

    Args:
        scripts: Per-model scripts, keyed by the request's ``model``.
        default: Script for models not in ``scripts`` (default ``ModelScript()``,
            shared by all such models, including its fault queue).
        port: TCP port; 0 picks a free one.
        host: Interface to bind (keep it local).
        record_messages: Keep request messages in the log (off for big benchmarks).

    Example:
        >>> from langchain_openai import ChatOpenAI
        >>> from moa_graph.testing import ModelScript, OpenAICompatibleServer
        >>> scripts = {"m1": ModelScript(reply="hello there", faults=["http_429"])}
        >>> with OpenAICompatibleServer(scripts) as server:  # doctest: +SKIP
        ...     llm = ChatOpenAI(model="m1", base_url=server.base_url,
        ...                      api_key="sk-test", max_retries=1)
        ...     assert llm.invoke("hi").content == "hello there"
        ...     assert [r.outcome for r in server.requests_for("m1")] == ["http_429", "stop"]
    """

    thread_name = "openai-test-server"

    def __init__(
        self,
        scripts: dict[str, ModelScript] | None = None,
        default: ModelScript | None = None,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        record_messages: bool = True,
    ) -> None:
        self.scripts: dict[str, ModelScript] = dict(scripts or {})
        self.default: ModelScript = default if default is not None else ModelScript()
        self.record_messages = record_messages
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        super().__init__(self._app(), host, port)

    # ------------------------------------------------------------------ public API

    def script_for(self, model: str) -> ModelScript:
        """The script answering ``model``."""
        return self.scripts.get(model, self.default)

    def set_script(self, model: str, script: ModelScript) -> None:
        """Set (or replace) the script for ``model``."""
        self.scripts[model] = script

    def add_faults(self, model: str, *faults: FaultLike) -> None:
        """Queue faults on the script answering ``model`` (creates one if missing)."""
        if model not in self.scripts:
            self.scripts[model] = ModelScript()
        self.scripts[model].add_faults(*faults)

    def requests(self) -> list[RequestRecord]:
        """A snapshot of all recorded chat-completion requests, oldest first."""
        with self._log_lock:
            return list(self._log)

    def reset(self) -> None:
        """Clear the request log and re-seed every script's latency RNG."""
        with self._log_lock:
            self._log.clear()
        for script in [*self.scripts.values(), self.default]:
            script.reseed()

    def serve_forever(self, *, exit_on_stdin_eof: bool = False, announce: bool = True) -> None:
        """Serve on the current thread until SIGINT/SIGTERM (or stdin EOF).

        Args:
            exit_on_stdin_eof: Also stop when stdin closes (parent process died).
            announce: Print ``{"port": ..., "base_url": ...}`` on stdout once listening.
        """
        stop = threading.Event()
        if exit_on_stdin_eof:
            threading.Thread(target=_set_at_stdin_eof, args=(stop,), daemon=True).start()

        def print_address() -> None:
            print(json.dumps({"port": self.port, "base_url": self.base_url}), flush=True)

        self.serve_until_signal(until=stop, on_start=print_address if announce else None)

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> Starlette:
        routes = [
            *(Route(p, self._chat, methods=["POST"]) for p in _both("/chat/completions")),
            *(Route(p, self._models, methods=["GET"]) for p in _both("/models")),
            Route("/_log", self._get_log, methods=["GET"]),
            Route("/_reset", self._reset, methods=["POST"]),
            Route("/_scripts", self._set_scripts, methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: routing_error})

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "moa-graph-test"}
            for name in sorted(self.scripts)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _get_log(self, request: Request) -> Response:
        return JSONResponse({"requests": [r.to_dict() for r in self.requests()]})

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _set_scripts(self, request: Request) -> Response:
        try:
            config = json.loads(await request.body() or b"{}")
            scripts = {m: ModelScript.from_dict(s) for m, s in config.get("scripts", {}).items()}
            default = config.get("default")
            default = None if default is None else ModelScript.from_dict(default)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return _error_response(400, f"bad scripts: {exc}")
        if config.get("replace"):
            self.scripts = scripts
        else:
            self.scripts.update(scripts)
        if default is not None:
            self.default = default
        return JSONResponse({"models": sorted(self.scripts)})

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        start = asyncio.get_running_loop().time()
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
                raise ValueError("expected a JSON object with a 'messages' list")
        except ValueError as exc:
            return _error_response(400, f"Invalid request body: {exc}")
        messages: list[dict[str, Any]] = payload["messages"]
        record = RequestRecord(
            id=next(self._ids),
            model=str(payload.get("model", "")),
            messages=messages if self.record_messages else [],
            params={
                k: v
                for k, v in payload.items()
                if k not in ("model", "messages", "stream") and k.lower() not in _SECRET_PARAMS
            },
            stream=bool(payload.get("stream")),
            received_at=time.time(),
            prompt_tokens=prompt_tokens(messages),
            auth_present=any(h in request.headers for h in _AUTH_HEADERS),
        )
        with self._log_lock:
            self._log.append(record)
        return _ScriptedResponse(self, record, payload, start)

    async def _respond(self, ex: _Exchange) -> None:
        """Answer one recorded request: its script's next fault, or a normal answer."""
        record = ex.record
        script = self.script_for(record.model)
        try:
            fault = script.next_fault()
            if fault is not None:
                record.outcome = fault.kind.value
                await self._fault(fault, script, ex)
            else:
                await self._answer(script, ex)
        except asyncio.CancelledError:
            if record.outcome == "pending":
                record.outcome = "cancelled"
            raise
        finally:
            if record.answered_at is None:
                record.answered_at = time.time()

    async def _answer(self, script: ModelScript, ex: _Exchange, outcome: str | None = None) -> None:
        """Answer normally (after the scripted latency)."""
        record, payload = ex.record, ex.payload
        try:
            reply = script.respond(payload)
        except Exception as exc:
            message = f"reply callable failed: {type(exc).__name__}: {exc}"
            ex.complete(500, "reply_error")
            await ex.respond(500, openai_wire.error_body(message, "server_error"))
            return
        # A final assistant message is continued, as llama.cpp does: the script's reply goes on
        # from it, limits apply to the new text, and a whole answer repeats the prefix.
        prefix = _wire.final_assistant_text(payload)
        text, finish = _wire.apply_limits(_wire.continuation(reply.content, prefix), payload)
        cid = self._completion_id(record)
        calls = _wire.tool_calls_json(cid, reply.tool_calls)
        if calls:
            finish = "tool_calls"
        pieces = tokenize(text)
        latency = script.draw_latency()
        total = latency.total(len(pieces))
        record.ttft, record.per_token, record.tail = latency.ttft, latency.per_token, latency.tail
        record.scripted_latency = total
        record.completion_tokens = count_tokens(text)
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
        }
        n = payload.get("n")
        n_choices = n if isinstance(n, int) and n > 1 else 1
        if not record.stream:
            if not await ex.client.sleep_until(ex.start + total):
                record.outcome = "client_disconnected"
                return
            content = text if prefix is None else prefix + text
            body = openai_wire.completion_body(
                cid, record.model, int(time.time()), content, finish, usage, n_choices, calls
            )
            ex.complete(200, outcome or finish, response=text)
            await ex.respond(200, body)
            return
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        fmt = openai_wire.ChunkFormatter(
            cid, record.model, int(time.time()), n_choices, include_usage
        )
        pending = await self._stream(ex, fmt, pieces, latency)
        if pending is None:
            return
        if latency.per_token > 0 and pieces:  # last token now, finish chunk after a beat
            await ex.write(pending)
            pending = b""
            await ex.client.sleep_until(ex.start + total)
        data = pending + fmt.tool_calls(calls) + fmt.event({}, finish)
        if include_usage:
            data += fmt.usage(usage)
        ex.complete(200, outcome or finish, response=text)
        await ex.end(data + openai_wire.SSE_DONE)

    @staticmethod
    async def _stream(
        ex: _Exchange, fmt: openai_wire.ChunkFormatter, pieces: list[str], latency: ScriptedLatency
    ) -> bytes | None:
        """Start the stream and send content chunks paced by ``latency``.

        Returns:
            Bytes not yet sent (to send with the stream's tail), or ``None``
            if the client has gone away.
        """
        if not await ex.client.sleep_until(ex.start + latency.ttft):
            ex.record.outcome = "client_disconnected"
            return None
        ex.record.status = 200
        ex.record.first_token_at = time.time()
        await ex.begin(200, openai_wire.SSE_HEADERS)
        pending = fmt.event(openai_wire.ROLE_DELTA)
        for i, piece in enumerate(pieces):
            if i and latency.per_token > 0:
                await ex.write(pending)
                pending = b""
                deadline = ex.start + latency.ttft + i * latency.per_token
                if not await ex.client.sleep_until(deadline):
                    ex.record.outcome = "client_disconnected"
                    return None
            pending += fmt.content(piece)
        return pending

    async def _fault(self, fault: FaultSpec, script: ModelScript, ex: _Exchange) -> None:
        """Inject ``fault`` instead of a normal answer."""
        kind, record = fault.kind, ex.record
        if kind is Fault.HANG:
            await ex.client.wait_gone()  # until the client gives up or the server stops
            return
        if kind is Fault.EMPTY:
            empty = ModelScript(reply="", ttft=fault.delay)
            await self._answer(empty, ex, outcome=kind.value)
            return
        record.scripted_latency = fault.delay
        await ex.client.sleep_until(ex.start + fault.delay)
        if kind in HTTP_ERRORS:
            status, type_, code, message = HTTP_ERRORS[kind]
            message = fault.message or message.format(prompt_tokens=record.prompt_tokens)
            param = "messages" if kind is Fault.CONTEXT_LENGTH else None
            headers = [("x-request-id", f"req-{record.id}")]
            if kind is Fault.HTTP_429:
                headers.append(("Retry-After", f"{fault.retry_after:g}"))
            ex.complete(status, kind.value)
            await ex.respond(status, openai_wire.error_body(message, type_, code, param), headers)
            return
        if kind is Fault.RESET:
            record.answered_at = time.time()
            await ex.drop(reset=True)
            return
        if kind is Fault.MALFORMED_JSON:
            broken = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{'
            ex.complete(200, kind.value)
            if record.stream:
                await ex.begin(200, openai_wire.SSE_HEADERS)
                await ex.end(openai_wire.sse(broken) + openai_wire.SSE_DONE)
            else:
                await ex.begin(200, [*_JSON, ("Content-Length", str(len(broken)))])
                await ex.end(broken)
            return
        await self._cut(fault, script, ex)

    async def _cut(self, fault: FaultSpec, script: ModelScript, ex: _Exchange) -> None:
        """``cut_stream``: a stream drops after a few chunks, a plain body half way."""
        record = ex.record
        cid = self._completion_id(record)
        if record.stream:
            try:
                text = script.answer(ex.payload)
            except Exception:
                text = default_reply(ex.payload)
            pieces = tokenize(text)[: fault.chunks_before_cut]
            fmt = openai_wire.ChunkFormatter(cid, record.model, int(time.time()), 1, False)
            pending = await self._stream(ex, fmt, pieces, ScriptedLatency(0.0, 0.0))
            if pending is None:
                return
        else:
            full = openai_wire.dumps({"id": cid, "object": "chat.completion", "choices": []})
            await ex.begin(200, [*_JSON, ("Content-Length", str(len(full)))])
            pending = full[: len(full) // 2]
        ex.complete(200, fault.kind.value)
        await ex.write(pending)
        await ex.drop()

    def _completion_id(self, record: RequestRecord) -> str:
        return f"chatcmpl-{self._id_prefix}{record.id:06d}"


def _both(path: str) -> tuple[str, str]:
    """A route with and without the ``/v1`` prefix."""
    return "/v1" + path, path


def _error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(openai_wire.error_body(message, "invalid_request_error"), status)


class _ScriptedResponse(Response):
    """The scripted answer to one recorded chat request, sent when uvicorn sends the response."""

    def __init__(
        self, server: OpenAICompatibleServer, record: RequestRecord, payload: Any, start: float
    ) -> None:
        super().__init__()  # what is sent is decided in __call__
        self.server, self.record, self.payload, self.start = server, record, payload, start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with ClientWatch(receive, send) as client:
            exchange = _Exchange(
                self.record, self.payload, self.start, scope, client, self.server.connections
            )
            await self.server._respond(exchange)


@dataclass
class _Exchange:
    """One chat-completion request being answered."""

    record: RequestRecord
    payload: dict[str, Any]
    start: float
    scope: Scope
    client: ClientWatch
    connections: Connections

    def complete(self, status: int, outcome: str, *, response: str | None = None) -> None:
        """Complete the record; before the response's last bytes, so that a client that reads
        the log right after its response sees it."""
        record = self.record
        record.status, record.outcome, record.response = status, outcome, response
        record.answered_at = time.time()

    async def begin(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Send the status line and headers."""
        await self.client.send(start_message(status, headers))

    async def write(self, data: bytes) -> None:
        """Send part of the body."""
        await self.client.send(body_message(data, more=True))

    async def end(self, data: bytes = b"") -> None:
        """Send the last part of the body."""
        await self.client.send(body_message(data, more=False))

    async def respond(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A complete JSON response."""
        body = openai_wire.dumps(obj)
        await self.begin(status, [*_JSON, ("Content-Length", str(len(body))), *headers])
        await self.end(body)

    async def drop(self, *, reset: bool = False) -> None:
        """End the connection mid-response: FIN after what was sent, or a TCP reset.

        Wire faults need the socket, which ASGI does not expose: the server's
        :class:`~moa_graph.serve.runner.Connections` finds the request's transport.
        """
        with contextlib.suppress(LookupError):  # the client has gone already
            transport = self.connections.transport_for(self.scope)
            if reset:
                reset_connection(transport)
            else:
                transport.close()
        await self.client.wait_gone()  # then uvicorn knows it too: no "incomplete response" log


def _set_at_stdin_eof(event: threading.Event) -> None:
    """Set ``event`` once stdin reaches EOF (the parent process closed it, or died)."""
    with contextlib.suppress(OSError):
        while os.read(sys.stdin.fileno(), 65536):
            pass
    event.set()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scripts-json", default="{}", help="{model: ModelScript JSON}")
    parser.add_argument("--default-json", default=None, help="ModelScript JSON for other models")
    parser.add_argument("--no-messages", action="store_true", help="don't log messages")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    args = parser.parse_args(argv)
    scripts = {m: ModelScript.from_dict(s) for m, s in json.loads(args.scripts_json).items()}
    default = ModelScript.from_dict(json.loads(args.default_json)) if args.default_json else None
    server = OpenAICompatibleServer(
        scripts, default, args.port, host=args.host, record_messages=not args.no_messages
    )
    server.serve_forever(exit_on_stdin_eof=args.exit_on_stdin_eof)


if __name__ == "__main__":
    main()
