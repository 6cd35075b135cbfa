"""Griffe reads ``Example:`` (singular) as an example section, as Sphinx's Napoleon does.

The package's docstrings are Google style with ``Example:`` sections of doctests (run by the test
suite); griffe's Google parser knows only the plural, and would render their ``>>>`` lines as
Markdown text. This extension renames the section before griffe parses a docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Turns every ``Example:`` section title into ``Examples:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
