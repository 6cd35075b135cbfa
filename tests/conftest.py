"""Shared fixtures."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_graph.local import weights
from moa_graph.testing import OpenAICompatibleServer
from tests.support.snippets import snippet_environment


@pytest.fixture
def local_models_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every registered local model counts as installed, for tests that build mixtures of them
    without running them: each multi-part model's assembled file is in a fresh cache with its
    verification record (the file itself is sparse: nothing may load it)."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    for spec in weights.MODELS.values():
        if len(spec.parts) == 1:
            continue  # the single-part model is installed with the tests
        target = (tmp_path / spec.filename).resolve()
        with target.open("wb") as file:
            file.truncate(spec.size)
        stat = target.stat()
        record = {"sha256": spec.sha256, "path": str(target), "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns}  # fmt: skip
        (tmp_path / f"{spec.filename}.sha256").write_text(json.dumps(record))
    yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole test session (a fresh cluster on 127.0.0.1, deleted
    afterwards): tests share it, each on threads or tables of its own."""
    from moa_graph.testing.postgres import PostgresServer

    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """A new, empty database on the session's PostgreSQL server (its URL)."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_url.rsplit('/', 1)[0]}/{name}"


@pytest.fixture(autouse=True)
def _fresh_openai_async_clients() -> Iterator[None]:
    """langchain-openai keeps one async HTTP client per base URL and timeout for the whole
    process. A test that runs ``asyncio.run`` closes the loop its kept connections belong to; a
    later test whose loopback server got the same port would reuse them and fail with "Event
    loop is closed". Each test starts with no such client."""
    from langchain_openai.chat_models._client_utils import _cached_async_httpx_client

    yield
    _cached_async_httpx_client.cache_clear()


@pytest.fixture(scope="session")
def snippet_server() -> Iterator[OpenAICompatibleServer]:
    """The loopback server answering the documentation's hosted models."""
    with OpenAICompatibleServer() as running:
        yield running


@pytest.fixture
def snippet_env(snippet_server: OpenAICompatibleServer) -> dict[str, str]:
    """The environment a documentation snippet runs in (see ``tests.support.snippets``)."""
    snippet_server.reset()
    return snippet_environment(snippet_server)
