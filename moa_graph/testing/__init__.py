"""Offline test helpers: a scripted OpenAI-compatible HTTP server, and a throwaway PostgreSQL.

See :class:`~moa_graph.testing.openai_server.OpenAICompatibleServer` (in-process,
on a daemon thread), :class:`~moa_graph.testing.process.ServerProcess`
(child process, for benchmarks) and :class:`~moa_graph.testing.postgres.PostgresServer` (a
fresh cluster on 127.0.0.1, for tests and benchmarks). Names are imported lazily so that
``python -m moa_graph.testing.openai_server`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa_graph.testing.faults import Fault, FaultSpec
    from moa_graph.testing.openai_server import OpenAICompatibleServer
    from moa_graph.testing.postgres import PostgresServer
    from moa_graph.testing.process import ServerProcess
    from moa_graph.testing.records import RequestRecord
    from moa_graph.testing.scripts import (
        ModelScript,
        ScriptedLatency,
        ScriptedReply,
        ScriptedToolCall,
        count_tokens,
        tokenize,
    )

_EXPORTS = {
    "Fault": "faults",
    "FaultSpec": "faults",
    "ModelScript": "scripts",
    "OpenAICompatibleServer": "openai_server",
    "PostgresServer": "postgres",
    "RequestRecord": "records",
    "ScriptedLatency": "scripts",
    "ScriptedReply": "scripts",
    "ScriptedToolCall": "scripts",
    "ServerProcess": "process",
    "count_tokens": "scripts",
    "tokenize": "scripts",
}

__all__ = [
    "Fault",
    "FaultSpec",
    "ModelScript",
    "OpenAICompatibleServer",
    "PostgresServer",
    "RequestRecord",
    "ScriptedLatency",
    "ScriptedReply",
    "ScriptedToolCall",
    "ServerProcess",
    "count_tokens",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
