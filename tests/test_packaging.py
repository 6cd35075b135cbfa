"""What a user installs: a slim core, extras that say when they are missing, the package's facts."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import moa_graph
from moa_graph.extras import EXTRAS, MissingExtraError, require

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[; ]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_a_plain_install_brings_the_mixture_and_its_providers_only() -> None:
    assert _names(PROJECT["dependencies"]) == {
        "langchain-core", "langgraph", "langchain", "langchain-openai", "langchain-together",
        "typing-extensions",
    }  # fmt: skip


def test_every_extra_is_declared_and_all_is_all_of_them() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"serve", "local", "sqlite", "durable", "postgres", "eval", "all"}
    assert extras["durable"] == extras["sqlite"]  # the old name keeps working
    assert extras["all"] == ["moa-graph[serve,local,sqlite,postgres,eval]"]
    assert _names(extras["serve"]) == {"starlette", "uvicorn", "h11"}
    assert "xllamacpp" in _names(extras["local"])
    # what the package checks for is what the extra installs
    for extra in EXTRAS.values():
        assert extra.name in extras
    # test and lint tools are not something a user installs
    assert not {"pytest", "ruff", "mypy"} & {n for e in extras.values() for n in _names(e)}
    assert {"test", "dev", "docs"} <= set(PYPROJECT["dependency-groups"])


def test_import_loads_no_optional_package() -> None:
    optional = ["starlette", "uvicorn", "h11", "xllamacpp", "huggingface_hub", "psycopg",
                "matplotlib", "langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres",
                "fastapi", "langserve"]  # fmt: skip
    probe = f"import sys, moa_graph; print([m for m in {optional!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=ROOT)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_the_version_is_written_once() -> None:
    assert moa_graph.__version__ == importlib.metadata.version("moa-graph") == PROJECT["version"]
    sources = [p for p in (ROOT / "moa_graph").rglob("*.py")
               if re.search(r"__version__\s*=\s*['\"]\d+\.\d+", p.read_text())]  # fmt: skip
    assert sources == []


def test_the_facts_a_user_checks_are_there() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert PROJECT["urls"] and PROJECT["keywords"] and PROJECT["classifiers"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {PROJECT['version']}" in changelog


def test_require_names_the_extra_and_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(MissingExtraError) as info:
        require("serve", "moa-graph serve")
    assert str(info.value) == ("moa-graph serve needs the 'serve' extra (uvicorn not installed): "
                               "pip install 'moa-graph[serve]'")  # fmt: skip
    require("eval", "a plot")  # installed: nothing happens


HIDE = "import sys\nfor name in {hidden!r}: sys.modules[name] = None\n"


def run_cli_without(hidden: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``moa-graph ARGV`` in a process where the ``hidden`` packages cannot be imported."""
    code = HIDE.format(hidden=hidden) + "from moa_graph.cli import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("hidden", "argv", "command"),
    [
        (["starlette", "uvicorn"], ["serve", "--preset", "local-tiny"],
         "pip install 'moa-graph[serve]'"),
        (["xllamacpp"], ["ask", "--preset", "local-tiny", "Hi"], "pip install 'moa-graph[local]'"),
        (["xllamacpp"], ["ask", "--proposer", "local:smollm2-135m", "--aggregator",
                         "local:smollm2-135m", "--layers", "2", "Hi"],
         "pip install 'moa-graph[local]'"),
        (["langgraph.checkpoint.sqlite"],
         ["ask", "--preset", "local-tiny", "--checkpoint", "sqlite:///runs.db", "Hi"],
         "pip install 'moa-graph[sqlite]'"),
    ],
)  # fmt: skip
def test_a_surface_without_its_extra_says_so_in_one_line_and_exits_2(
    hidden: list[str], argv: list[str], command: str
) -> None:
    result = run_cli_without(hidden, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(command), result.stderr
    assert result.stdout == ""
