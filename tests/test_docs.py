"""The documentation site matches the code: generated tables, every page reachable, no drift.

``make docs`` builds the site with ``--strict`` (broken links, anchors and API references fail);
these tests check what a build cannot: that tables generated from declarations are current.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moa_graph.cli.models import models_table
from moa_graph.cli.options import serve_options_table, settings_table, strategies_table
from moa_graph.testing import OpenAICompatibleServer
from tests.support.snippets import hosted_models, python_blocks, run_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "table", "regenerate"),
    [
        ("guides/settings.md", settings_table, "moa-graph settings"),
        ("guides/aggregation.md", strategies_table, "moa-graph settings"),
        ("guides/serving.md", serve_options_table, "moa-graph settings"),
        ("guides/local-models.md", models_table, "moa_graph.cli.models.models_table()"),
    ],
)
def test_generated_tables_are_the_declarations(name: str, table: object, regenerate: str) -> None:
    assert callable(table)
    assert table() in page(name), f"regenerate {name}'s table with {regenerate}"


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    listed = set(re.findall(r"([\w/-]+\.md)", config.split("nav:", 1)[1]))
    assert pages == listed


def test_no_tracker_talk_in_the_docs() -> None:
    for path in DOCS.rglob("*.md"):
        assert not re.search(r"\b[Ii]ssues? \d", path.read_text()), path


def test_the_changelog_page_is_the_changelog() -> None:
    assert '--8<-- "CHANGELOG.md"' in page("changelog.md")


@pytest.mark.parametrize(
    ("name", "index"),
    [("getting-started.md", 1), ("guides/api.md", 0), ("guides/graphs.md", 0)],
)
def test_the_guides_whole_examples_run_as_written(
    name: str, index: int, snippet_env: dict[str, str], snippet_server: OpenAICompatibleServer
) -> None:
    """The guides' complete examples run against the loopback server (hosted providers'
    models answered there); fragments that need their page's context are not run."""
    block = python_blocks(page(name))[index]
    result = run_block(block, snippet_env)
    assert result.returncode == 0, result.stderr[-2000:]
    named = hosted_models(block)
    assert named and named <= {request.model for request in snippet_server.requests()}


def test_the_architecture_pages_extension_examples_run_as_written(
    snippet_env: dict[str, str],
) -> None:
    """Each extension point's example (a Strategy instance, an entry-point strategy, the local
    backend protocol) runs as written, in a process of its own."""
    blocks = python_blocks(page("architecture.md"))
    assert len(blocks) == 3
    for block in blocks:
        result = run_block(block, snippet_env)
        assert result.returncode == 0, result.stderr[-2000:]
