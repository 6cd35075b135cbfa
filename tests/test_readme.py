"""The README speaks to users and contributors and matches the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

from moa_graph.cli.options import serve_options_table, settings_table, strategies_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_settings_strategies_and_server_tables_are_the_declarations() -> None:
    assert settings_table() in README, "regenerate with `moa-graph settings`"
    assert strategies_table() in README, "regenerate with `moa-graph settings`"
    assert serve_options_table() in README, "regenerate with `moa-graph settings`"


def test_the_contents_link_every_section() -> None:
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert links == [anchor(h) for h in headings if h != "Contents"]


def test_no_tracker_talk() -> None:
    assert not re.search(r"\b[Ii]ssues? \d", README)


def test_the_two_set_up_commands_come_first() -> None:
    setup = README.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make (\w+)", setup, flags=re.MULTILINE) == ["demo", "test"]
