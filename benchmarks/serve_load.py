"""``moa-graph serve --workers N`` under hundreds of concurrent streaming clients.

The server runs a 2-proposer mixture against the scripted loopback server (in its own process,
each call 100 ms to its first token, then 20 tokens 10 ms apart), with ``--workers`` worker
processes; ``--clients`` clients each send one streaming chat request at once and read the
answer to its end. Side by side in one run: without a store, then with the durable store
(``--checkpoint`` on a PostgreSQL started here, every request with its own
``Idempotency-Key``, so every run writes its checkpoints).

Reported for each side: requests answered in full (status 200, the whole answer, ``[DONE]``),
latency to the first answer token and to the end (p50, p99, seconds), wall time, and the peak
resident memory of the server (supervisor and workers together, sampled every 100 ms).

Run: ``python -m benchmarks.serve_load`` (part of ``make bench``); ``--workers``, ``--clients``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from moa_graph.testing import ModelScript, PostgresServer, ServerProcess

NAME = "moa-load"
ANSWER_WORDS = 20
RECIPE = """aggregator = "openai:agg"
layers = 2
proposers = ["openai:p1", "openai:p2"]
max_retries = 0
timeout = 120
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children, from ``/proc`` (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        total += int(rss.split()[1]) * 1024
        pending += [int(child) for child in children]
    return total


class _PeakMemory:
    """Samples a process tree's resident memory on a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, _rss_bytes(self.pid))

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


async def _one_request(client: httpx.AsyncClient, url: str, n: int, keyed: bool) -> dict[str, Any]:
    """One streaming request: whether it was answered in full, its first-token and total time."""
    headers = {"Idempotency-Key": f"load-{n}"} if keyed else {}
    body = {"model": NAME, "stream": True,
            "messages": [{"role": "user", "content": f"Question {n}?"}]}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    text, done = [], False
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                return {"ok": False, "error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    delta = json.loads(line[6:])["choices"]
                    content = delta[0]["delta"].get("content") if delta else None
                    if content:
                        first = first or time.perf_counter() - started
                        text.append(content)
    except httpx.HTTPError as exc:
        return {"ok": False, "error": type(exc).__name__}
    words = "".join(text).split()
    return {"ok": done and len(words) == ANSWER_WORDS, "first_s": first,
            "total_s": time.perf_counter() - started}  # fmt: skip


async def _load(base_url: str, clients: int, keyed: bool) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        url = f"{base_url}/chat/completions"
        return list(await asyncio.gather(*(_one_request(client, url, n, keyed)
                                           for n in range(clients))))  # fmt: skip


def _wait_up(base_url: str, process: subprocess.Popen[bytes], workers: int) -> None:
    """Until every worker answers (each builds its mixture first)."""
    deadline = time.monotonic() + 180
    answered = 0
    while answered < 4 * workers:
        if process.poll() is not None:
            raise RuntimeError("moa-graph serve exited")
        try:
            answered += httpx.get(f"{base_url}/models", timeout=5).status_code == 200
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _side(recipe: Path, env: dict[str, str], workers: int, clients: int,
          checkpoint: str | None) -> dict[str, Any]:  # fmt: skip
    port = _free_port()
    command = [str(Path(sys.executable).parent / "moa-graph"), "serve", "--config", str(recipe),
               "--port", str(port), "--workers", str(workers), "--model-name", NAME]  # fmt: skip
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    base_url = f"http://127.0.0.1:{port}/v1"
    quiet = subprocess.DEVNULL  # the workers' access log
    process = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet)
    try:
        _wait_up(base_url, process, workers)
        with _PeakMemory(process.pid) as memory:
            started = time.perf_counter()
            results = asyncio.run(_load(base_url, clients, keyed=checkpoint is not None))
            wall = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    answered = [r for r in results if r["ok"]]
    firsts = [r["first_s"] for r in answered]
    totals = [r["total_s"] for r in answered]
    errors = sorted({r.get("error", "incomplete") for r in results if not r["ok"]})
    return {
        "answered": f"{len(answered)}/{clients}",
        "errors": errors,
        "first_token_p50_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_token_p99_s": round(_percentile(firsts, 0.99), 3) if firsts else None,
        "total_p50_s": round(statistics.median(totals), 3) if totals else None,
        "total_p99_s": round(_percentile(totals, 0.99), 3) if totals else None,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(memory.peak / 2**20),
    }


def measure(workers: int, clients: int) -> dict[str, Any]:
    reply = " ".join(f"w{i}" for i in range(ANSWER_WORDS))
    script = ModelScript(reply=reply, ttft=0.1, per_token=0.01, jitter=0.0)
    scripts = {name: script for name in ("p1", "p2", "agg")}
    postgres = PostgresServer()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(scripts, record_messages=False) as up:
        recipe = Path(tmp) / "moa.toml"
        recipe.write_text(RECIPE)
        env = {**os.environ, "OPENAI_BASE_URL": up.base_url, "OPENAI_API_KEY": "sk-bench"}
        env.pop("MOA_GRAPH_API_KEY", None)
        try:
            store = postgres.start()
            plain = _side(recipe, env, workers, clients, checkpoint=None)
            kept = _side(recipe, env, workers, clients, checkpoint=store)
        finally:
            postgres.stop()
    return {"workers": workers, "clients": clients, "no store": plain, "durable store": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=400)
    args = parser.parse_args()
    print(json.dumps(measure(args.workers, args.clients), indent=2))


if __name__ == "__main__":
    main()
