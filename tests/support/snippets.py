"""Running documentation snippets as written, in a process of their own.

Hosted providers' models are answered by the loopback OpenAI-compatible server:
``OPENAI_BASE_URL`` and ``TOGETHER_API_BASE`` point there, with placeholder keys.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from moa_graph.testing import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def snippet_environment(server: OpenAICompatibleServer) -> dict[str, str]:
    """This process's environment, hosted providers pointed at ``server``, tracing off."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-docs-placeholder",
           "OPENAI_BASE_URL": server.base_url, "TOGETHER_API_KEY": "docs-placeholder",
           "TOGETHER_API_BASE": server.base_url}  # fmt: skip
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_TRACING"):
        env.pop(name, None)
    return env


def run_block(block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block as a script (from the repository's root)."""
    return subprocess.run([sys.executable, "-c", block], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=900)  # fmt: skip


def hosted_models(block: str) -> set[str]:
    """The hosted models a block names (``"together:..."``, ``"openai:..."``), without provider."""
    return set(re.findall(r'"(?:together|openai):([^"]+)"', block))
