"""Read a mixture recipe from a TOML file (the command line's ``--config``).

Example file::

    layers = 2
    aggregator = "local:qwen2.5-coder-1.5b"
    temperature = 0.7
    max_tokens = 256
    aggregation = "vote"          # synthesize | vote | rank | synthesize_with_votes
    answer_extractor = "number"
    proposers = ["local:qwen2.5-coder-0.5b", { model = "local:smollm2-135m", samples = 2 }]
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from moa_graph.presets import Recipe

ALLOWED_KEYS = {
    "name", "description", "proposers", "aggregator", "layers", "prompt", "min_proposals",
    "temperature", "max_tokens", "timeout", "max_retries", "aggregation", "answer_extractor",
    "shuffle_references", "seed", "aggregation_window", "early_exit",
}  # fmt: skip


def load_recipe(path: str | Path) -> Recipe:
    """Load a TOML recipe; an unreadable file or an unknown key is a ``ValueError``.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        ...     _ = f.write('aggregator = "openai:gpt-4o"\\nproposers = ["openai:gpt-4o-mini"]\\n')
        >>> load_recipe(f.name).aggregator
        'openai:gpt-4o'
        >>> os.unlink(f.name)
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        raise ValueError(
            f"config: unknown key(s) {', '.join(sorted(unknown))} in {path}; "
            f"allowed: {', '.join(sorted(ALLOWED_KEYS))}"
        )
    for required in ("proposers", "aggregator"):
        if required not in data:
            raise ValueError(f"config: {path} has no '{required}'")
    options: dict[str, Any] = {
        key: data[key] for key in ALLOWED_KEYS - {"name", "description", "proposers",
                                                  "aggregator", "layers"} if key in data
    }  # fmt: skip
    return Recipe(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", f"recipe from {path}")),
        proposers=data["proposers"],
        aggregator=data["aggregator"],
        layers=data.get("layers"),
        options=options,
    )
