"""The README sells the package to a new user, and everything it shows works as shown.

Every Python block runs as written, in a process of its own: the hosted providers' blocks against
the loopback OpenAI-compatible server (``OPENAI_BASE_URL`` and ``TOGETHER_API_BASE`` point there),
the keyless block on the embedded models.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_graph.testing import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


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


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer() as running:
        yield running


@pytest.fixture
def loopback(server: OpenAICompatibleServer) -> dict[str, str]:
    """The environment a README block runs in: hosted providers answered by the loopback
    server, with placeholder keys."""
    server.reset()
    env = {**os.environ, "OPENAI_API_KEY": "sk-readme-placeholder",
           "OPENAI_BASE_URL": server.base_url, "TOGETHER_API_KEY": "readme-placeholder",
           "TOGETHER_API_BASE": server.base_url}  # fmt: skip
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_TRACING"):
        env.pop(name, None)
    return env


def run_block(block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", block], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=900)  # fmt: skip


def test_there_are_python_blocks_for_each_way_to_use_it() -> None:
    assert len(PYTHON_BLOCKS) == 4


@pytest.mark.parametrize("index", [1, 2, 3])
def test_the_hosted_blocks_run_as_written(
    index: int, loopback: dict[str, str], server: OpenAICompatibleServer
) -> None:
    block = PYTHON_BLOCKS[index]
    result = run_block(block, loopback)
    assert result.returncode == 0, result.stderr[-2000:]
    named = set(re.findall(r'"(?:together|openai):([^"]+)"', block))
    assert named  # every model the block names was asked, through its provider's client
    assert named <= {request.model for request in server.requests()}


@pytest.mark.local_model
def test_the_keyless_block_runs_on_the_embedded_models(loopback: dict[str, str]) -> None:
    block = PYTHON_BLOCKS[0]
    assert "presets.local()" in block
    result = run_block(block, loopback)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
