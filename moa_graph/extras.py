"""The package's optional parts (pip extras), and the one-line error that names the one to install.

``pip install moa-graph`` brings the mixture itself: LangChain, LangGraph and the providers of the
paper's recipes. Serving, the embedded models, durable threads and evaluation plots each need an
extra; a surface used without its extra says which, in one line, before doing any work.

Example:
    >>> require("eval", "a test")  # matplotlib is installed with the tests
    >>> EXTRAS["serve"].install
    "pip install 'moa-graph[serve]'"
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Extra:
    """One extra: its name, the modules it provides and what it is for."""

    name: str
    modules: tuple[str, ...]
    purpose: str

    @property
    def install(self) -> str:
        """The command that installs it."""
        return f"pip install 'moa-graph[{self.name}]'"

    def missing(self) -> list[str]:
        """Its modules that cannot be imported here (found without importing them)."""
        return [module for module in self.modules if not _importable(module)]


EXTRAS: dict[str, Extra] = {
    extra.name: extra
    for extra in (
        Extra("serve", ("starlette", "uvicorn", "h11"), "moa-graph serve (OpenAI-compatible API)"),
        Extra(
            "local",
            ("xllamacpp", "huggingface_hub"),
            "the embedded models (llama.cpp in-process) and GGUF files from the Hugging Face hub",
        ),
        Extra("sqlite", ("langgraph.checkpoint.sqlite",), "threads kept in SQLite"),
        Extra("postgres", ("langgraph.checkpoint.postgres", "psycopg"), "runs kept in PostgreSQL"),
        Extra("eval", ("matplotlib",), "the evaluation's quality-vs-cost plot"),
    )
}
"""Every extra of the package (``durable`` is another name for ``sqlite``; ``all`` is all)."""


class MissingExtraError(ImportError):
    """A feature was used without the extra it needs; the message is one line ending with the
    ``pip install`` command."""

    def __init__(self, extra: Extra, feature: str, missing: list[str]) -> None:
        super().__init__(
            f"{feature} needs the '{extra.name}' extra ({', '.join(missing)} not installed): "
            f"{extra.install}"
        )
        self.extra = extra


def require(extra: str, feature: str) -> None:
    """Raise ``MissingExtraError`` unless every module of ``extra`` can be imported.

    Args:
        extra: the extra's name (a key of ``EXTRAS``).
        feature: what needs it, as the message should name it (``"moa-graph serve"``).
    """
    needed = EXTRAS[extra]
    missing = needed.missing()
    if missing:
        raise MissingExtraError(needed, feature, missing)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False
