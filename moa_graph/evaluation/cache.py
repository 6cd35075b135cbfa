"""An append-only JSONL cache of results, so an interrupted experiment resumes where it stopped.

Each line is one record ``{"kind", "key", "value", "time"}``; ``key`` is a list of strings (for
answers: the system's key and the item id). Records are flushed and fsync'ed one by one, so at
most the line being written when the process died is lost; such a torn last line is skipped on
load. A later record with the same key wins.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cache.jsonl")
    >>> cache = ResultCache(path)
    >>> cache.put("answer", ("sys#1", "gsm8k/0"), {"turns": ["18"]})
    >>> ResultCache(path).get("answer", ("sys#1", "gsm8k/0"))
    {'turns': ['18']}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moa_graph.evaluation.postgres import create_table, is_postgres_url, postgres_connection
from moa_graph.redact import masked_url


class ResultCache:
    """Records by ``(kind, key)`` in one append-only JSONL file (safe to share between threads),
    or in a PostgreSQL table that the processes of a sharded experiment share.

    Args:
        path: the file, created (with its folder) on the first write; a ``postgresql://`` URL;
            or ``None`` to keep the records in memory only.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.url = str(path) if path is not None and is_postgres_url(str(path)) else None
        self.path = Path(path) if path is not None and self.url is None else None
        self._lock = threading.Lock()
        self._records: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.skipped_lines = 0
        self._db: Any = None
        if self.url is not None:
            self._db = postgres_connection(self.url)
            create_table(
                self._db,
                "CREATE TABLE IF NOT EXISTS moa_results (kind TEXT, key TEXT, value TEXT, "
                "time DOUBLE PRECISION, PRIMARY KEY (kind, key))",
            )
            self.refresh()
        elif self.path is not None and self.path.exists():
            self._load(self.path)

    @property
    def where(self) -> str:
        """Where the records are kept, as logs may show it (a URL's password masked)."""
        return masked_url(self.url) if self.url else str(self.path or "memory")

    def refresh(self) -> None:
        """Read again what other processes stored (PostgreSQL; a file is read once)."""
        if self._db is None:
            return
        rows = self._db.execute("SELECT kind, key, value FROM moa_results").fetchall()
        with self._lock:
            for kind, key, value in rows:
                self._records[(kind, tuple(json.loads(key)))] = json.loads(value)

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                    key = (str(record["kind"]), tuple(str(part) for part in record["key"]))
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1  # a torn write from an interrupted run
                    continue
                self._records[key] = record["value"]

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, kind_key: tuple[str, Sequence[str]]) -> bool:
        kind, key = kind_key
        return (kind, tuple(key)) in self._records

    def get(self, kind: str, key: Sequence[str], default: Any = None) -> Any:
        """The stored value, or ``default``."""
        return self._records.get((kind, tuple(key)), default)

    def put(self, kind: str, key: Sequence[str], value: Any) -> None:
        """Store ``value`` and append it to the file at once (flushed to disk)."""
        record = {"kind": kind, "key": list(key), "value": value, "time": time.time()}
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            if self._db is not None:
                self._db.execute(
                    "INSERT INTO moa_results VALUES (%s, %s, %s, %s) ON CONFLICT (kind, key) "
                    "DO UPDATE SET value = EXCLUDED.value, time = EXCLUDED.time",
                    (kind, json.dumps(list(key)), json.dumps(record["value"], default=str),
                     record["time"]),
                )  # fmt: skip
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as file:
                    if file.tell() and not _ends_with_newline(self.path):
                        file.write("\n")  # never glue a record onto a torn line
                    file.write(line + "\n")
                    file.flush()
                    os.fsync(file.fileno())
            # what a later run would read back (tuples become lists, ...)
            self._records[(kind, tuple(key))] = json.loads(line)["value"]

    def items(self, kind: str) -> Iterator[tuple[tuple[str, ...], Any]]:
        """Every ``(key, value)`` of one kind."""
        for (record_kind, key), value in list(self._records.items()):
            if record_kind == kind:
                yield key, value


def answers_by_system(
    path: str | Path, systems: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """The stored answers of an experiment's named systems: system name -> item id -> the
    answer as stored (``turns``, ``usage``, ``calls``, ``model_s``, ``extra``, ...), for scripts
    that look at the answers item by item.

    Raises:
        ValueError: a system answered under two configurations (two keys), which would mix.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "cache.jsonl"
        >>> ResultCache(path).put("answer", ["vote#1a2b", "gsm8k/7"], {"turns": ["42"], "calls": 5})
        >>> answers_by_system(path, ["vote"])["vote"]["gsm8k/7"]["calls"]
        5
    """
    answers: dict[str, dict[str, dict[str, Any]]] = {system: {} for system in systems}
    keys: dict[str, set[str]] = {system: set() for system in systems}
    for (system_key, item), answer in ResultCache(path).items("answer"):
        system = system_key.split("#")[0]
        if system in answers:
            keys[system].add(system_key)
            answers[system][item] = answer
    for system, found in keys.items():
        if len(found) > 1:
            raise ValueError(
                f"{system} answered under {len(found)} configurations: {sorted(found)}"
            )
    return answers


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"
