"""The runs one server worker keeps (``moa-graph serve --checkpoint URL``).

A request carrying an ``Idempotency-Key`` runs on the thread its key names, checkpointed in the
store, so a retry finishes or repeats that run instead of paying for it again. Two runs of one
key must never go at once (they would pay the proposers twice and interleave their
checkpoints): a worker takes a *lease* on the key for the run's duration and renews it while
the run goes on. With PostgreSQL the leases are rows every worker and machine sees, and a dead
worker's lease expires after ``lease_seconds``; with ``memory`` or SQLite they hold within
the worker only. A request whose key is leased gets 409 with ``Retry-After`` (which OpenAI's
clients retry).

The leases are hand-written because LangGraph's checkpointers lock nothing across processes
(LangGraph Platform queues runs per thread in its own server, which is not open source).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.checkpoints import async_checkpointer, checkpoint_kind
from moa_graph.redact import masked_url

logger = logging.getLogger(__name__)

STORE_CONNECTIONS = 8
"""Database connections of one worker's checkpointer (see ``async_checkpointer``)."""

POOL_TIMEOUT = 10.0
"""Seconds to wait for a database connection (a cut-off mid-migration could leave an invalid
index, so only connecting is bounded)."""

RETRY_OPEN_AFTER = 5.0
"""While the store cannot be reached, requests fail at once for this many seconds (503 with
``Retry-After``) instead of each waiting in turn."""


class StoreUnavailableError(RuntimeError):
    """The store of kept runs cannot be reached (the message masks a password)."""


class KeyInUseError(RuntimeError):
    """Another run of the same key is going on (``retry_after``: seconds to wait)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__("a run of this Idempotency-Key is in progress")


_LEASES_TABLE = """CREATE TABLE IF NOT EXISTS moa_graph_leases (
    thread TEXT PRIMARY KEY, owner TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL)"""
_LEASES_LOCK = 727_274_003
_CLAIM = """INSERT INTO moa_graph_leases AS lease (thread, owner, expires)
    VALUES (%(thread)s, %(owner)s, now() + make_interval(secs => %(seconds)s))
    ON CONFLICT (thread) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
    WHERE lease.expires < now() OR lease.owner = excluded.owner
    RETURNING owner"""
_LEASED_FOR = "SELECT extract(epoch FROM expires - now()) FROM moa_graph_leases WHERE thread = %s"
_RENEW = """UPDATE moa_graph_leases SET expires = now() + make_interval(secs => %(seconds)s)
    WHERE thread = %(thread)s AND owner = %(owner)s"""
_RELEASE = "DELETE FROM moa_graph_leases WHERE thread = %s AND owner = %s"


class KeptRuns:
    """A worker's store of kept runs and its leases, opened once (at start-up, or by the first
    kept request of an app without a lifespan).

    Args:
        url: The store (a ``moa_graph.checkpoints`` URL).
        lease_seconds: How long a key stays leased after its worker last renewed it (a live
            run renews it every third of that).

    Example:
        >>> runs = KeptRuns("memory")
        >>> runs.url, runs.shared_leases
        ('memory', False)
    """

    def __init__(self, url: str, lease_seconds: float = 30.0) -> None:
        checkpoint_kind(url)  # ValueError for an unknown URL, before serving
        self.url = url
        self.lease_seconds = lease_seconds
        self.shared_leases = checkpoint_kind(url) == "postgres"
        self.owner = secrets.token_hex(8)
        self._saver: Any = None
        self._pool: Any = None
        self._kept: tuple[ChatMixtureOfAgents, ChatMixtureOfAgents] | None = None
        self._running: set[str] = set()
        self._opening = asyncio.Lock()
        self._unreachable_until = 0.0
        self._resources = AsyncExitStack()

    async def open(self) -> None:
        """Open the checkpointer (and the leases' table): once, shared by concurrent callers.

        Raises:
            StoreUnavailableError: the store cannot be reached; later calls within
                :data:`RETRY_OPEN_AFTER` seconds fail at once.
        """
        async with self._opening:
            if self._saver is not None:
                return
            if time.monotonic() < self._unreachable_until:
                raise StoreUnavailableError(f"the run store {masked_url(self.url)} is unreachable")
            try:  # the pool waits POOL_TIMEOUT for a connection; migrations are not cut short
                await self._open()
            except (OSError, TimeoutError, _database_error()) as exc:
                await self._resources.aclose()
                self._resources = AsyncExitStack()
                self._unreachable_until = time.monotonic() + RETRY_OPEN_AFTER
                logger.error("cannot open the run store %s: %s", masked_url(self.url), exc)
                raise StoreUnavailableError(
                    f"the run store {masked_url(self.url)} is unreachable"
                ) from None

    async def _open(self) -> None:
        saver = await self._resources.enter_async_context(
            async_checkpointer(self.url, connections=STORE_CONNECTIONS)
        )
        if self.shared_leases:
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(self.url, min_size=1, max_size=2, timeout=POOL_TIMEOUT,
                                       kwargs={"autocommit": True}, open=False)  # fmt: skip
            self._pool = await self._resources.enter_async_context(pool)
            async with self._pool.connection() as connection, connection.transaction():
                # workers starting together take turns: concurrent CREATE TABLE IF NOT EXISTS
                # statements can fail one another
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASES_LOCK,))
                await connection.execute(_LEASES_TABLE)
        self._saver = saver

    async def mixture(self, moa: ChatMixtureOfAgents) -> ChatMixtureOfAgents:
        """``moa`` keeping its runs in the store (made once per served mixture)."""
        await self.open()
        if self._kept is None or self._kept[0] is not moa:  # the served mixture was replaced
            self._kept = (moa, moa.with_checkpointer(self._saver))
        return self._kept[1]

    @asynccontextmanager
    async def leased(self, thread: str) -> AsyncIterator[None]:
        """Hold ``thread``'s lease while the block runs (renewed; released at the end).

        Raises:
            KeyInUseError: a run of the thread is going on here or in another worker.
        """
        if thread in self._running:  # the same worker runs it: retry about when it renews
            raise KeyInUseError(retry_after=self.lease_seconds / 3)
        self._running.add(thread)
        try:
            if not self.shared_leases:
                yield
                return
            try:
                await self._claim(thread)
            except _database_error() as exc:
                logger.error("cannot lease a kept run in %s: %s", masked_url(self.url), exc)
                raise StoreUnavailableError(
                    f"the run store {masked_url(self.url)} is unreachable"
                ) from None
            except asyncio.CancelledError:  # the row may be written: never leave it behind
                await asyncio.shield(self._release(thread))
                raise
            run = asyncio.current_task()
            renewing = asyncio.create_task(self._renew(thread, run))
            try:
                yield
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                await asyncio.shield(self._release(thread))
        finally:
            self._running.discard(thread)

    async def _claim(self, thread: str) -> None:
        arguments = {"thread": thread, "owner": self.owner, "seconds": self.lease_seconds}
        async with self._pool.connection() as connection:
            claimed = await (await connection.execute(_CLAIM, arguments)).fetchone()
            if claimed is None:
                left = await (await connection.execute(_LEASED_FOR, (thread,))).fetchone()
                raise KeyInUseError(retry_after=max(1.0, float(left[0]) if left else 1.0))

    async def _renew(self, thread: str, run: asyncio.Task[Any] | None) -> None:
        """Renew the lease every third of its length. A lease found taken by another worker
        (this one could not renew it in time) stops the run: two runs of one key must not go
        on at once."""
        arguments = {"thread": thread, "owner": self.owner, "seconds": self.lease_seconds}
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                async with self._pool.connection() as connection:
                    renewed = (await connection.execute(_RENEW, arguments)).rowcount
                    if not renewed:  # lapsed: take it again unless another worker has
                        renewed = await (await connection.execute(_CLAIM, arguments)).fetchone()
            except Exception as exc:  # the run goes on; the lease may lapse meanwhile
                logger.warning("could not renew the lease of a kept run: %s", exc)
                continue
            if not renewed:
                logger.error("the lease of a kept run passed to another worker: run stopped")
                if run is not None:
                    run.cancel()
                return

    async def _release(self, thread: str) -> None:
        try:
            async with self._pool.connection() as connection:
                await connection.execute(_RELEASE, (thread, self.owner))
        except Exception as exc:  # it expires by itself
            logger.warning("could not release the lease of a kept run: %s", exc)

    async def close(self) -> None:
        """Close the store's connections."""
        await self._resources.aclose()


def _database_error() -> type[Exception]:
    """psycopg's base error class (its pool's timeouts derive from it), or a stand-in."""
    try:
        import psycopg
    except ImportError:
        return OSError
    return psycopg.Error
