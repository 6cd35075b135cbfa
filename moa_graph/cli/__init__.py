"""The ``moa-graph`` command: ``ask``, ``chat``, ``serve`` and ``eval`` (``moa_graph.cli.main``)."""

from moa_graph.cli.main import main

__all__ = ["main"]
