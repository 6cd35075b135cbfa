"""The README sells the package to a new user, and everything it shows works as shown.

Every Python block runs as written, in a process of its own (``tests.support.snippets``): the
hosted providers' blocks against the loopback OpenAI-compatible server, the keyless block on the
embedded models.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moa_graph.testing import OpenAICompatibleServer
from tests.support.snippets import hosted_models, python_blocks, run_block

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = python_blocks(README)


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 300


def test_it_says_how_to_install_and_the_two_fresh_clone_commands() -> None:
    assert "pip install moa-graph" in README
    assert re.findall(r"^make (\w+)", README, flags=re.MULTILINE) == ["demo", "test"]
    for extra in ("local", "serve", "sqlite", "postgres", "eval", "all"):
        assert f"`{extra}`" in README or f"[{extra}]" in README, extra


def test_the_hosted_quickstart_names_its_environment_variables() -> None:
    hosted = README.split("## Quickstart with hosted models", 1)[1].split("\n## ", 1)[0]
    assert "TOGETHER_API_KEY" in hosted and "OPENAI_API_KEY" in hosted


def test_no_tracker_talk() -> None:
    assert not re.search(r"\b[Ii]ssues? \d", README)


def test_every_relative_link_reaches_a_file() -> None:
    links = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", README)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []


def test_there_are_python_blocks_for_each_way_to_use_it() -> None:
    assert len(PYTHON_BLOCKS) == 4


@pytest.mark.parametrize("index", [1, 2, 3])
def test_the_hosted_blocks_run_as_written(
    index: int, snippet_env: dict[str, str], snippet_server: OpenAICompatibleServer
) -> None:
    block = PYTHON_BLOCKS[index]
    result = run_block(block, snippet_env)
    assert result.returncode == 0, result.stderr[-2000:]
    named = hosted_models(block)
    assert named  # every model the block names was asked, through its provider's client
    assert named <= {request.model for request in snippet_server.requests()}


@pytest.mark.local_model
def test_the_keyless_block_runs_on_the_embedded_models(snippet_env: dict[str, str]) -> None:
    block = PYTHON_BLOCKS[0]
    assert "presets.local()" in block
    result = run_block(block, snippet_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
