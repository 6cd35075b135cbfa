"""A persistent LangChain LLM cache, so systems of one experiment share identical calls.

In an experiment, one model alone and the same model in a mixture's first layer get the same
messages; with a fixed seed they are the same call. ``CallCache`` (a SQLite file) answers a call
already made, whichever system makes it again, and survives an interrupted run. LangChain keys a
call by its messages (ids ignored) and the model's settings, call keywords (``seed``) included.

Example:
    >>> import tempfile
    >>> from langchain_core.outputs import ChatGeneration
    >>> from langchain_core.messages import AIMessage
    >>> cache = CallCache(tempfile.mkdtemp() + "/calls.sqlite")
    >>> cache.update("prompt", "model", [ChatGeneration(message=AIMessage("4"))])
    >>> cache.lookup("prompt", "model")[0].message.content, cache.lookup("other", "model")
    ('4', None)
    >>> cache.hits, cache.misses
    (1, 1)
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core._api.beta_decorator import LangChainBetaWarning
from langchain_core.caches import BaseCache
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation

_GENERATIONS = (ChatGeneration, ChatGenerationChunk, Generation, AIMessage, AIMessageChunk)
"""All a cached call may hold: only generations and the answer messages are revived."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CallCache(BaseCache):
    """LLM calls and their results in one SQLite file, safe to use from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (prompt TEXT, llm TEXT, generations TEXT, "
            "PRIMARY KEY (prompt, llm))"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT generations FROM calls WHERE prompt = ? AND llm = ?",
                (_digest(prompt), _digest(llm_string)),
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangChainBetaWarning)
            generations: list[Generation] = loads(row[0], allowed_objects=_GENERATIONS)
        return generations

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                (_digest(prompt), _digest(llm_string), dumps(list(return_val))),
            )
            self._db.commit()

    def clear(self, **kwargs: Any) -> None:
        with self._lock:
            self._db.execute("DELETE FROM calls")
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
