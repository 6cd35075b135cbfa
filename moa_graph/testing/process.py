"""Run the OpenAI-compatible test server in a child process (off the caller's GIL)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Self

from moa_graph.serve.runner import HTTPAddress
from moa_graph.testing.records import RequestLogQueries, RequestRecord
from moa_graph.testing.scripts import ModelScript

# Runs ``openai_server.main`` without executing ``moa_graph/__init__.py``: the
# server needs only Starlette and uvicorn, so the child starts fast and stays lean
# (no LangChain/LangGraph imports competing for the benchmark's CPU).
_BOOTSTRAP = """
import sys, types
package = types.ModuleType("moa_graph")
package.__path__ = [sys.argv.pop(1)]
sys.modules["moa_graph"] = package
from moa_graph.testing.openai_server import main
main(sys.argv[1:])
"""


class ServerProcess(HTTPAddress, RequestLogQueries):
    """The server in a child process, so it does not share the caller's GIL.

    Args:
        scripts: Per-model scripts (JSON-serialisable: no callable replies).
        default: Script for other models.
        port: TCP port; 0 picks a free one.
        record_messages: Keep request messages in the log.
        startup_timeout: Seconds to wait for the child to listen.

    Example:
        >>> with ServerProcess({"m": ModelScript(ttft=0.2)}) as proc:  # doctest: +SKIP
        ...     run_benchmark(base_url=proc.base_url)
        ...     ideal = max(r.scripted_latency for r in proc.requests())
    """

    def __init__(
        self,
        scripts: dict[str, ModelScript] | None = None,
        default: ModelScript | None = None,
        port: int = 0,
        *,
        record_messages: bool = True,
        startup_timeout: float = 30.0,
    ) -> None:
        self._args = ["--port", str(port)]
        if scripts:
            scripts_json = {m: s.to_dict() for m, s in scripts.items()}
            self._args += ["--scripts-json", json.dumps(scripts_json)]
        if default is not None:
            self._args += ["--default-json", json.dumps(default.to_dict())]
        if not record_messages:
            self._args.append("--no-messages")
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = port
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int | None:
        """The child's process id while running."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> Self:
        """Spawn the child and wait until it listens."""
        if self._proc is not None:
            raise RuntimeError("server process already started")
        package_dir = str(Path(__file__).resolve().parents[1])
        cmd = [sys.executable, "-c", _BOOTSTRAP, package_dir, "--exit-on-stdin-eof"]
        self._proc = proc = subprocess.Popen(
            [*cmd, *self._args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self._startup_timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("test server process did not start")
        self._port = int(json.loads(line)["port"])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (closes its stdin, then terminates/kills if needed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for close in (proc.stdin, proc.stdout):
            if close is not None:
                close.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with self._opener.open(req, timeout=30) as resp:
            return json.loads(resp.read())

    def requests(self) -> list[RequestRecord]:
        """The child's request log (fetched via ``GET /_log``)."""
        return [RequestRecord.from_dict(r) for r in self._call("GET", "/_log")["requests"]]

    def reset(self) -> None:
        """Clear the child's log and re-seed its scripts (``POST /_reset``)."""
        self._call("POST", "/_reset", {})

    def set_scripts(
        self,
        scripts: dict[str, ModelScript],
        default: ModelScript | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Send scripts to the child (``POST /_scripts``); ``replace`` drops the others."""
        body: dict[str, Any] = {
            "scripts": {m: s.to_dict() for m, s in scripts.items()},
            "replace": replace,
        }
        if default is not None:
            body["default"] = default.to_dict()
        self._call("POST", "/_scripts", body)
