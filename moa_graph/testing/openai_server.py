"""A scripted, dependency-free OpenAI-compatible HTTP server for offline tests.

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
import itertools
import json
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from moa_graph import http_messages
from moa_graph.loop_server import LoopServer
from moa_graph.serve import openai_wire
from moa_graph.testing import _wire
from moa_graph.testing.faults import HTTP_ERRORS, Fault, FaultLike, FaultSpec, error_body
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


class OpenAICompatibleServer(LoopServer, RequestLogQueries):
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
    backlog = 2048

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
        super().__init__(host, port)
        self.record_messages = record_messages
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

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
        asyncio.run(self._serve_forever(exit_on_stdin_eof, announce))

    # ------------------------------------------------------------------ lifecycle

    async def _serve_forever(self, exit_on_stdin_eof: bool, announce: bool) -> None:
        await self._open()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if exit_on_stdin_eof:
            await loop.connect_read_pipe(lambda: _EofProtocol(stop), sys.stdin)
        if announce:
            print(json.dumps({"port": self._port, "base_url": self.base_url}), flush=True)
        await stop.wait()
        await self._close()

    # ------------------------------------------------------------------ HTTP

    def _reject(self, writer: asyncio.StreamWriter, message: str) -> None:
        body = error_body(message, "invalid_request_error", None)
        writer.write(http_messages.json_response(400, body, keep_alive=False))

    async def _dispatch(
        self,
        request: http_messages.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Handle one request; return whether the connection may be reused."""
        path = request.path.rstrip("/")
        keep = request.keep_alive
        if path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                return self._send_error(writer, 405, "Use POST.", keep)
            return await self._chat(request, reader, writer)
        if request.method == "GET" and path in ("/v1/models", "/models"):
            writer.write(http_messages.json_response(200, self._models(), keep_alive=keep))
            return True
        if request.method == "GET" and path == "/_log":
            log = {"requests": [r.to_dict() for r in self.requests()]}
            writer.write(http_messages.json_response(200, log, keep_alive=keep))
            return True
        if request.method == "POST" and path == "/_reset":
            self.reset()
            writer.write(http_messages.json_response(200, {"ok": True}, keep_alive=keep))
            return True
        if request.method == "POST" and path == "/_scripts":
            try:
                self._load_scripts(json.loads(request.body or b"{}"))
            except (ValueError, TypeError, KeyError) as exc:
                return self._send_error(writer, 400, f"bad scripts: {exc}", keep)
            models = sorted(self.scripts)
            writer.write(http_messages.json_response(200, {"models": models}, keep_alive=keep))
            return True
        return self._send_error(writer, 404, f"No route for {request.method} {path}.", keep)

    @staticmethod
    def _send_error(writer: asyncio.StreamWriter, status: int, message: str, keep: bool) -> bool:
        body = error_body(message, "invalid_request_error", None)
        writer.write(http_messages.json_response(status, body, keep_alive=keep))
        return keep

    def _models(self) -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "moa-graph-test"}
            for name in sorted(self.scripts)
        ]
        return {"object": "list", "data": data}

    def _load_scripts(self, config: dict[str, Any]) -> None:
        scripts = {m: ModelScript.from_dict(s) for m, s in config.get("scripts", {}).items()}
        if config.get("replace"):
            self.scripts = scripts
        else:
            self.scripts.update(scripts)
        if config.get("default") is not None:
            self.default = ModelScript.from_dict(config["default"])

    # ------------------------------------------------------------------ chat

    async def _chat(
        self,
        request: http_messages.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        start = asyncio.get_running_loop().time()
        keep = request.keep_alive
        try:
            payload = json.loads(request.body)
            if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
                raise ValueError("expected a JSON object with a 'messages' list")
        except ValueError as exc:
            return self._send_error(writer, 400, f"Invalid request body: {exc}", keep)
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
        script = self.script_for(record.model)
        exchange = _Exchange(record, payload, reader, writer, keep, start)
        try:
            fault = script.next_fault()
            if fault is not None:
                record.outcome = fault.kind.value
                return await self._fault(fault, script, exchange)
            return await self._answer(script, exchange)
        except (ConnectionError, OSError):
            record.outcome = "client_disconnected"
            raise
        except asyncio.CancelledError:
            if record.outcome == "pending":
                record.outcome = "cancelled"
            raise
        finally:
            if record.answered_at is None:
                record.answered_at = time.time()

    async def _answer(self, script: ModelScript, ex: _Exchange, outcome: str | None = None) -> bool:
        """Answer normally (after the scripted latency)."""
        record, payload = ex.record, ex.payload
        try:
            reply = script.respond(payload)
        except Exception as exc:
            message = f"reply callable failed: {type(exc).__name__}: {exc}"
            body = error_body(message, "server_error", None)
            response = http_messages.json_response(500, body, keep_alive=ex.keep)
            return ex.finish(response, 500, "reply_error")
        text, finish = _wire.apply_limits(reply.content, payload)
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
        if record.stream:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            created = int(time.time())
            fmt = openai_wire.ChunkFormatter(cid, record.model, created, n_choices, include_usage)
            pending = await self._stream(ex, fmt, pieces, latency)
            if pending is None:
                return False
            if latency.per_token > 0 and pieces:  # last token now, finish chunk after a beat
                ex.writer.write(pending)
                pending = b""
                await ex.writer.drain()
                await _sleep_until(ex.start + total)
            data = pending + fmt.tool_calls(calls) + fmt.event({}, finish)
            if include_usage:
                data += fmt.usage(usage)
            data += openai_wire.SSE_DONE
        else:
            await _sleep_until(ex.start + total, ex.reader)
            if ex.reader.at_eof():
                record.outcome = "client_disconnected"
                return False
            body = openai_wire.completion_body(
                cid, record.model, int(time.time()), text, finish, usage, n_choices, calls
            )
            data = http_messages.json_response(200, body, keep_alive=ex.keep)
        return ex.finish(data, 200, outcome or finish, response=text)

    @staticmethod
    async def _stream(
        ex: _Exchange, fmt: openai_wire.ChunkFormatter, pieces: list[str], latency: ScriptedLatency
    ) -> bytes | None:
        """Send the stream head and content chunks paced by ``latency``.

        Returns:
            Bytes not yet written (to send with the stream's tail), or ``None``
            if the client has gone away.
        """
        await _sleep_until(ex.start + latency.ttft, ex.reader)
        if ex.reader.at_eof():
            ex.record.outcome = "client_disconnected"
            return None
        ex.record.status = 200
        ex.record.first_token_at = time.time()
        pending = http_messages.head_bytes(200, openai_wire.SSE_HEADERS, keep_alive=ex.keep)
        pending += fmt.event(openai_wire.ROLE_DELTA)
        for i, piece in enumerate(pieces):
            if i and latency.per_token > 0:
                ex.writer.write(pending)
                pending = b""
                await ex.writer.drain()
                await _sleep_until(ex.start + latency.ttft + i * latency.per_token, ex.reader)
                if ex.reader.at_eof():
                    ex.record.outcome = "client_disconnected"
                    return None
            pending += fmt.content(piece)
        return pending

    async def _fault(self, fault: FaultSpec, script: ModelScript, ex: _Exchange) -> bool:
        """Inject ``fault`` instead of a normal answer."""
        kind, record = fault.kind, ex.record
        if kind is Fault.HANG:
            while await ex.reader.read(65536):  # until the client gives up
                pass
            return False
        if kind is Fault.EMPTY:
            empty = ModelScript(reply="", ttft=fault.delay)
            return await self._answer(empty, ex, outcome=kind.value)
        record.scripted_latency = fault.delay
        await _sleep_until(ex.start + fault.delay)
        if kind in HTTP_ERRORS:
            status, type_, code, message = HTTP_ERRORS[kind]
            message = fault.message or message.format(prompt_tokens=record.prompt_tokens)
            param = "messages" if kind is Fault.CONTEXT_LENGTH else None
            headers = [("x-request-id", f"req-{record.id}")]
            if kind is Fault.HTTP_429:
                headers.append(("Retry-After", f"{fault.retry_after:g}"))
            body = error_body(message, type_, code, param)
            response = http_messages.json_response(
                status, body, keep_alive=ex.keep, headers=headers
            )
            return ex.finish(response, status, kind.value)
        if kind is Fault.RESET:
            record.answered_at = time.time()
            http_messages.abort_with_reset(ex.writer)
            return False
        if kind is Fault.MALFORMED_JSON:
            broken = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{'
            if record.stream:
                head = http_messages.head_bytes(200, openai_wire.SSE_HEADERS, keep_alive=ex.keep)
                data = head + openai_wire.sse(broken) + openai_wire.SSE_DONE
            else:
                data = http_messages.response_bytes(200, broken, keep_alive=ex.keep)
            return ex.finish(data, 200, kind.value)
        # CUT_STREAM: a stream drops after a few chunks, a plain body half way.
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
                return False
            return ex.finish(pending, 200, kind.value, close=True)
        full = openai_wire.dumps({"id": cid, "object": "chat.completion", "choices": []})
        half = full[: len(full) // 2]
        data = http_messages.response_bytes(200, half, keep_alive=ex.keep, content_length=len(full))
        return ex.finish(data, 200, kind.value, close=True)

    def _completion_id(self, record: RequestRecord) -> str:
        return f"chatcmpl-{self._id_prefix}{record.id:06d}"


@dataclass
class _Exchange:
    """One chat-completion request being answered."""

    record: RequestRecord
    payload: dict[str, Any]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    keep: bool
    start: float

    def finish(
        self,
        data: bytes,
        status: int,
        outcome: str,
        *,
        response: str | None = None,
        close: bool = False,
    ) -> bool:
        """Complete the record, then send the response's last bytes.

        The record is completed first so a client that reads the log right
        after its response sees it. ``close`` ends the connection (FIN) after
        ``data``. Returns whether the connection may be reused.
        """
        record = self.record
        record.status, record.outcome, record.response = status, outcome, response
        record.answered_at = time.time()
        self.writer.write(data)
        if close:
            self.writer.close()
            return False
        return self.keep


async def _sleep_until(deadline: float, reader: asyncio.StreamReader | None = None) -> None:
    """Sleep until ``deadline`` (loop time), or until ``reader``'s client has gone away."""
    loop = asyncio.get_running_loop()
    while (delay := deadline - loop.time()) > 0:
        if reader is not None and reader.at_eof():
            return
        await asyncio.sleep(delay if reader is None else min(delay, _EOF_POLL_S))


_EOF_POLL_S = 0.05  # how often a scripted wait looks for a client that went away


class _EofProtocol(asyncio.Protocol):
    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def eof_received(self) -> bool | None:
        self._event.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._event.set()


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
