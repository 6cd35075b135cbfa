"""``moa-graph serve`` probed as an attacker would: the targets of issue 28, measured.

The server is the real one, ``moa-graph serve`` with its default limits in a process of its own
(one worker, a 2-proposer mixture), its models clients of the scripted loopback server in
another process. Measured:

1. **Malformed input**: a corpus of more than 200 hostile requests (malformed tool calls, JSON
   nested up to 100,000 levels, lone surrogates, oversized heads, unknown HTTP versions, bad
   fields and framing: :func:`malformed_corpus`), each on its own connection with a valid key:
   responses of status 500 or more (target 0), and the slowest answer (target under 1 s).
2. **Starvation**: ``/v1/models`` latency (p50, p99, max) polled while the largest acceptable
   request runs (as many messages as ``max_message_calls`` allows), and that request's time;
   also the time to refuse a 100,000-message request.
3. **Disconnects**: 100 concurrent streams, each closed by its client after the first answer
   token; upstream calls still running 2 s later (target 0), over ``--runs`` runs.
4. **Idle connections**: 5,000 connections that never send a byte: the server's resident
   memory and the size of its log before and after, how many were refused (503) over
   ``max_connections``, and whether a real request is still answered once they are closed.

Run: ``python -m benchmarks.serve_probe`` (``--runs``, ``--idle``); pause other work while it
times. The test suite runs the corpus (``tests/test_serve_hostile.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NAME = "moa-probe"
KEY = "served-key-0123456789abcdef"
UPSTREAM_KEY = "sk-plan-0123456789abcdefghij3456"


# -------------------------------------------------------------------------- the corpus


def _request(
    body: bytes | str | None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    version: str = "HTTP/1.1",
    headers: tuple[str, ...] = (),
    key: str = KEY,
) -> bytes:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body or b""
    lines = [f"{method} {path} {version}", "Host: probe", f"Authorization: Bearer {key}"]
    lines += ["Content-Type: application/json", f"Content-Length: {len(data)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def _chat(messages: Any = None, model: str = NAME, **fields: Any) -> str:
    """A chat body as JSON text (``messages`` default: one user turn)."""
    payload = {"model": model, "messages": messages or [{"role": "user", "content": "Hi?"}]}
    return json.dumps({**payload, **fields})


def _with_call(call: Any) -> str:
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    return _chat([{"role": "user", "content": "Hi"}, assistant, {"role": "user", "content": "?"}])


def _nested(depth: int, kind: str = "[") -> str:
    close = {"[": "]", '{"a":': "}"}[kind]
    return kind * depth + "1" + close * depth


def malformed_corpus(model: str = NAME, key: str = KEY) -> list[tuple[str, bytes]]:
    """Hostile requests, each ``(name, the bytes of one HTTP request)``: none is valid, and
    every one must be answered with a 4xx (or refused by the HTTP parser with 400)."""
    cases: list[tuple[str, str | bytes]] = []

    def add(name: str, body: str | bytes) -> None:
        cases.append((name, body))

    # 1. tool calls in the history
    for arguments in ["[1]", "1", '"s"', "null", "true", "[]", "{", '{"a":', "{}}", 5, [], {}]:
        add(f"tool-arguments-{arguments!r}", _with_call({"function": {"name": "f",
            "arguments": arguments}}))  # fmt: skip
    for name in [5, None, "", [], {}, True]:
        add(f"tool-name-{name!r}", _with_call({"function": {"name": name, "arguments": "{}"}}))
    for call_id in [{}, 5, [], True, 1.5]:
        add(f"tool-id-{call_id!r}", _with_call({"id": call_id, "function": {"name": "f"}}))
    for function in [None, "f", [], 5, {}]:
        add(f"tool-function-{function!r}", _with_call({"function": function}))
    for calls in ['"x"', "5", "{}", "[1]", "[null]", "[[]]", '["f"]']:
        add(f"tool-calls-{calls}", _chat().replace('"content": "Hi?"}',
            f'"content": "Hi?"}}, {{"role": "assistant", "tool_calls": {calls}}}'))  # fmt: skip
    deep_args = _nested(5000)
    add("tool-arguments-deep", _with_call({"function": {"name": "f", "arguments": deep_args}}))
    # 2. deep JSON, in every place
    for depth in [33, 100, 999, 1000, 1001, 5000, 100_000]:
        for kind in ["[", '{"a":']:
            label = "array" if kind == "[" else "object"
            add(f"deep-messages-{label}-{depth}", f'{{"model": "{model}", "messages": '
                f"{_nested(depth, kind)}}}")  # fmt: skip
    for depth in [40, 100_000]:
        add(f"deep-content-{depth}", _chat().replace('"Hi?"', _nested(depth)))
        add(
            f"deep-metadata-{depth}",
            _chat().replace("{", '{"metadata": ' + _nested(depth) + ",", 1),
        )
        add(f"deep-stop-{depth}", _chat().replace("{", '{"stop": ' + _nested(depth) + ",", 1))
        add(f"deep-top-{depth}", _nested(depth))
    # 3. lone surrogates (JSON escapes and raw bytes)
    for text in ["\\ud800", "\\udfff", "a\\ud800b", "\\udc00\\ud800", "\\ud83d"]:
        add(f"surrogate-content-{text}", _chat().replace("Hi?", text))
        add(f"surrogate-name-{text}", _chat().replace('"role": "user"',
            f'"role": "user", "name": "{text}"'))  # fmt: skip
    add("surrogate-model", _chat(model="m\\ud800").replace("\\\\", "\\"))
    add("surrogate-key", _chat().replace("{", '{"\\ud800": 1,', 1))
    add("surrogate-stop", _chat().replace("{", '{"stop": "\\ud800",', 1))
    add("surrogate-tool-args", _with_call({"function": {"name": "f",
        "arguments": '{"a": "\\ud800"}'}}))  # fmt: skip
    add("surrogate-raw-utf8", _chat().encode().replace(b"Hi?", b"\xed\xa0\x80"))
    # 4. too many messages
    for count in [1001, 3001, 20_000, 100_000]:
        add(f"messages-{count}", _chat([{"role": "user", "content": "a"}] * count))
    # bad JSON
    for text in ["", "{", "{}}", "[", "nul", "NaN", "Infinity", '{"a": NaN}', "{'a': 1}",
                 '{"model": "x",}', "\ufeff{}", "1e999", "9" * 5000, '{"model": 1e999}',
                 '"string"', "5", "null", "[]", "true", '{"model": ' + "9" * 5000 + "}"]:  # fmt: skip  # noqa: E501
        add(f"json-{text[:12]!r}", text)
    for blob in [b"\xff\xfe{\x00}\x00", b"\x00\x01\x02", b"\xc3\x28", b"\x80abc", b'{"a": "\xff"}']:
        add(f"bytes-{blob[:6]!r}", blob)
    # messages of the wrong shape
    for messages in ['"x"', "5", "{}", "[]", "[5]", "[[]]", "[null]", '["hi"]', "[{}]",
                     '[{"role": 5, "content": "a"}]', '[{"role": "bot", "content": "a"}]',
                     '[{"role": "user"}]', '[{"role": "user", "content": 5}]',
                     '[{"role": "user", "content": {}}]', '[{"role": "user", "content": [5]}]',
                     '[{"role": "user", "content": [{"type": "image_url"}]}]',
                     '[{"role": "user", "content": [{"type": "text", "text": 5}]}]',
                     '[{"role": "user", "content": ""}]', '[{"role": "user", "content": "   "}]',
                     '[{"role": "tool", "content": "a"}]',
                     '[{"role": "tool", "content": "a", "tool_call_id": 5}]',
                     '[{"role": "system", "content": "a"}]',
                     '[{"role": "assistant", "content": "a"}]',
                     '[{"role": "user", "content": "' + "a" * 400_001 + '"}]']:  # fmt: skip
        add(f"messages-{messages[:30]!r}", f'{{"model": "{model}", "messages": {messages}}}')
    for role in ["system", "developer", "user", "assistant", "tool"]:
        for content in ["5", "true", "{}", "[5]", '[{"type": "text"}]', '[{"text": "a"}]']:
            message = f'{{"role": "{role}", "content": {content}, "tool_call_id": "c"}}'
            add(f"content-{role}-{content[:12]}", f'{{"model": "{model}", "messages": '
                f'[{message}, {{"role": "user", "content": "?"}}]}}')  # fmt: skip
    # fields
    for field, value in [("stream", '"yes"'), ("stream", "1"), ("stream_options", "5"),
                         ("stop", "5"), ("stop", "[1]"), ("stop", '[""]'), ("stop", '["a","b","c","d","e"]'),  # noqa: E501
                         ("seed", '"x"'), ("seed", "1.5"), ("seed", "1e999"), ("seed", "[]"),
                         ("n", "2"), ("logprobs", "true"), ("tools", '[{"type": "function"}]'),
                         ("tool_choice", '"auto"'), ("functions", "[1]"),
                         ("response_format", '{"type": "json_object"}'), ("response_format", "5"),
                         ("base_url", '"http://evil"'), ("api_key", '"k"'), ("frobnicate", "1")]:  # fmt: skip  # noqa: E501
        add(f"field-{field}-{value[:10]}", _chat().replace("{", f'{{"{field}": {value},', 1))
    for model_value in [5, "", "other", [], None, {"a": 1}]:
        add(f"field-model-{model_value!r}", _chat().replace(f'"{model}"', json.dumps(model_value)))
    requests = [(name, _request(body)) for name, body in cases]
    # the head
    many = tuple(f"X-H{i}: v" for i in range(10_000))
    requests += [
        ("headers-10000", _request(_chat(), headers=many)),
        ("header-20k", _request(_chat(), headers=("X-Pad: " + "a" * 20_000,))),
        ("http-2.0", _request(_chat(), version="HTTP/2.0")),
        ("http-9.9", _request(_chat(), version="HTTP/9.9")),
        ("http-0.9", _request(_chat(), version="HTTP/0.9")),
        ("http-3.0", _request(_chat(), version="HTTP/3.0")),
        ("http-garbage", _request(_chat(), version="HTTX/1.1")),
        ("duplicate-content-length", _request(_chat(), headers=("Content-Length: 9",))),
        ("negative-content-length", _request(None, headers=("Content-Length: -5",))),
        ("xchunked", _request(None, headers=("Transfer-Encoding: xchunked",))),
        ("space-before-colon", _request(None, headers=("Content-Length : 5",))),
        (
            "no-host",
            b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n",
        ),
        ("models-slash-evil-host", b"GET /v1/models/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
        ("chat-slash", _request(_chat(), path="/v1/chat/completions/")),
        ("query-key", _request(_chat(), path=f"/v1/chat/completions?api_key={key}", key="x")),
        ("both-framings", _request(_chat(), headers=("Transfer-Encoding: chunked",))),
        ("method-garbage", _request(_chat(), method="P\x01ST")),
        ("target-garbage", _request(_chat(), path="/v1/\x00")),
        ("percent-garbage", _request(_chat(), path="/v1/%ff%fe")),
    ]
    return requests


# -------------------------------------------------------------------------- a raw client


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """Send ``data`` on a new connection; the response's status (0 for none), its bytes and
    the seconds until the connection closed or the response was whole."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # refused while sending: read what it said
            sock.sendall(data)
        while True:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            received += part
            if _complete(received):
                break
    elapsed = time.monotonic() - started
    status_line = received.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    return status, received, elapsed


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


# -------------------------------------------------------------------------- the server


RECIPE = """proposers = ["openai:p1", "openai:p2"]
aggregator = "openai:agg"
layers = 2
max_retries = 0
"""


class Served:
    """``moa-graph serve`` (one worker, default limits) in a process of its own, its models
    clients of the scripted loopback server in another; its stdout and stderr in a file."""

    def __init__(self, tmp: Path) -> None:
        from moa_graph.testing import ModelScript, ServerProcess

        words = " ".join(f"w{i}" for i in range(200))
        self.upstream = ServerProcess(
            {
                "p1": ModelScript(reply="Paris."),
                "p2": ModelScript(reply="It is Paris."),
                # 20 tokens a second for 10 s: a stream that outlives its client shows
                "agg": ModelScript(reply=words, ttft=0.05, per_token=0.05),
            },
            record_messages=False,
        )
        self.tmp = tmp
        self.log_path = tmp / "serve.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Served:
        self.upstream.start()
        recipe = self.tmp / "moa.toml"
        recipe.write_text(RECIPE)
        env = {**os.environ, "OPENAI_BASE_URL": self.upstream.base_url,
               "OPENAI_API_KEY": UPSTREAM_KEY, "MOA_GRAPH_API_KEY": KEY}  # fmt: skip
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [str(Path(sys.executable).parent / "moa-graph"), "serve", "--config",
                   str(recipe), "--port", str(self.port), "--model-name", NAME]  # fmt: skip
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moa-graph serve exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                if exchange(self.port, _request(None, method="GET", path="/v1/models"))[0]:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError("moa-graph serve did not start")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
        self.upstream.stop()

    def rss(self) -> int:
        """The server process's resident memory, in bytes."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size


def probe_corpus(port: int) -> dict[str, Any]:
    """Every corpus case on its own connection: statuses, server errors and the slowest."""
    results = []
    for name, data in malformed_corpus():
        status, _, elapsed = exchange(port, data)
        results.append((name, status, elapsed))
    # 505 (HTTP Version Not Supported) is the refusal the issue asks for unknown versions
    errors = [(n, s) for n, s, _ in results if s >= 500 and s != 505]
    statuses: dict[int, int] = {}
    for _, status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    times = sorted(elapsed for _, _, elapsed in results)
    slowest = max(results, key=lambda r: r[2])
    return {
        "cases": len(results),
        "responses >= 500 (505 for unknown HTTP versions aside)": len(errors),
        "errors": errors[:10],
        "statuses": dict(sorted(statuses.items())),
        "answer p50 (s)": round(statistics.median(times), 4),
        "slowest (s)": round(slowest[2], 3),
        "slowest case": slowest[0],
    }


def probe_starvation(served: Served) -> dict[str, Any]:
    """``/v1/models`` latency while the largest acceptable request runs (its conversion
    happens as its calls start: the first 2 s are the ones that count)."""
    import httpx

    from moa_graph.serve.options import ServeOptions

    calls = 3  # the recipe's two proposers and its aggregator
    options = ServeOptions()
    count = min(options.max_messages, options.max_message_calls // calls)
    messages = [{"role": "user", "content": f"turn {i}"} for i in range(count)]
    headers = {"Authorization": f"Bearer {KEY}"}
    latencies: list[float] = []
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def largest() -> None:
        started = time.monotonic()
        with httpx.Client(timeout=120) as client:
            reply = client.post(served.base_url + "/chat/completions", headers=headers,
                                json={"model": NAME, "messages": messages})  # fmt: skip
        outcome["status"], outcome["seconds"] = reply.status_code, time.monotonic() - started
        done.set()

    worker = threading.Thread(target=largest)
    with httpx.Client(timeout=30) as client:
        worker.start()
        while not done.is_set():
            started = time.monotonic()
            client.get(served.base_url + "/models", headers=headers).raise_for_status()
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
        worker.join()
        huge = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "a"}] * 100_000})
        started = time.monotonic()
        refused = client.post(served.base_url + "/chat/completions", headers=headers,
                              content=huge)  # fmt: skip
        refused_in = time.monotonic() - started
    latencies.sort()
    return {
        "largest acceptable request (messages x model calls)": f"{count} x {calls}",
        "its status": outcome.get("status"),
        "its time (s)": round(outcome.get("seconds", 0.0), 2),
        "/v1/models polls meanwhile": len(latencies),
        "/v1/models p50 (s)": round(statistics.median(latencies), 4),
        "/v1/models p99 (s)": round(latencies[int(0.99 * (len(latencies) - 1))], 4),
        "/v1/models max (s)": round(latencies[-1], 4),
        "100,000 messages: status": refused.status_code,
        "100,000 messages: answered in (s)": round(refused_in, 3),
    }


async def _streams_closed_early(base_url: str, streams: int) -> int:
    """``streams`` streams at once, each closed after its first answer token; how many got one."""
    import httpx

    body = {"model": NAME, "stream": True, "messages": [{"role": "user", "content": "Hi?"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> bool:
            async with client.stream(
                "POST", base_url + "/chat/completions", json=body, headers=headers
            ) as reply:
                async for line in reply.aiter_lines():
                    if '"content":"w' in line.replace(" ", ""):
                        return True  # the first answer token: leave
            return False

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def probe_disconnects(served: Served, runs: int, streams: int) -> dict[str, Any]:
    """Upstream calls alive 2 s after ``streams`` streams were closed after a first token."""
    alive, first_tokens = [], []
    for _ in range(runs):
        served.upstream.reset()
        first_tokens.append(asyncio.run(_streams_closed_early(served.base_url, streams)))
        time.sleep(2)
        alive.append(served.upstream.in_flight())
    return {
        "runs": runs,
        "streams a run": streams,
        "streams that got a first token": first_tokens,
        "upstream calls alive 2 s after": alive,
    }


def probe_idle(served: Served, idle: int) -> dict[str, Any]:
    """Server RSS and log size with ``idle`` connections that never send a byte."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client needs them
    rss_before, log_before = served.rss(), served.log_bytes()
    sockets: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(idle):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", served.port))
            sockets.append(sock)
        time.sleep(3)
        rss_during, log_during = served.rss(), served.log_bytes()
        for sock in sockets:
            with contextlib.suppress(OSError):
                if sock.recv(16).startswith(b"HTTP/1.1 503"):
                    refused += 1
        # meanwhile a real client (the cap is reached: refused until the idle ones go)
        status_meanwhile = exchange(served.port, _request(None, method="GET",
                                                          path="/v1/models"))[0]  # fmt: skip
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(1)
    status_after = exchange(served.port, _request(None, method="GET", path="/v1/models"))[0]
    return {
        "idle connections": idle,
        "refused at once with 503": refused,
        "server RSS before (MiB)": round(rss_before / 2**20, 1),
        "server RSS with them open (MiB)": round(rss_during / 2**20, 1),
        "log bytes written meanwhile": log_during - log_before,
        "/v1/models while they are open": status_meanwhile,
        "/v1/models once they are closed": status_after,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="disconnect runs (default 10)")
    parser.add_argument("--streams", type=int, default=100, help="streams a run (default 100)")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (5000)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Served(Path(tmp)) as served:
        report["malformed corpus"] = probe_corpus(served.port)
        report["starvation"] = probe_starvation(served)
        report["disconnects"] = probe_disconnects(served, args.runs, args.streams)
        report["idle connections"] = probe_idle(served, args.idle)
        report["server log bytes in all"] = served.log_bytes()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
