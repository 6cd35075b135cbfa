"""Token usage by model, and what it costs given prices per million tokens.

Example:
    >>> prices = PriceTable.parse(["openai:gpt-4o-mini=0.15,0.60"])
    >>> usage = {"gpt-4o-mini": TokenUsage(input_tokens=1000, output_tokens=500)}
    >>> round(prices.cost(usage), 6)
    0.00045
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TokenUsage:
    """Input and output tokens of one or more calls (``+`` adds them up).

    Example:
        >>> TokenUsage(3, 2) + TokenUsage(1, 1)
        TokenUsage(input_tokens=4, output_tokens=3)
    """

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_metadata(cls, usage: Mapping[str, Any] | None) -> TokenUsage:
        """From LangChain's ``usage_metadata`` (or a proposal's ``usage``); ``None`` counts 0."""
        if not usage:
            return cls()
        return cls(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))


UsageByModel = dict[str, TokenUsage]
"""Token usage keyed by model label (the model id without its provider prefix)."""


def add_usage(total: UsageByModel, model: str, usage: TokenUsage) -> None:
    """Add ``usage`` to ``total[model]`` in place.

    Example:
        >>> total = {}
        >>> add_usage(total, "m", TokenUsage(1, 2)); add_usage(total, "m", TokenUsage(1, 0))
        >>> total
        {'m': TokenUsage(input_tokens=2, output_tokens=2)}
    """
    total[model] = total.get(model, TokenUsage()) + usage


def merge_usage(parts: Iterable[Mapping[str, TokenUsage]]) -> UsageByModel:
    """Sum several usage-by-model mappings."""
    total: UsageByModel = {}
    for part in parts:
        for model, usage in part.items():
            add_usage(total, model, usage)
    return total


@dataclass(frozen=True)
class Price:
    """US dollars per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: TokenUsage) -> float:
        """The price of ``usage`` in dollars."""
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1e6


class PriceTable:
    """Prices by model; a model is found by its full spec or by its label (no provider prefix).

    Example:
        >>> table = PriceTable({"together:Qwen/Qwen2.5-72B-Instruct-Turbo": Price(1.2, 1.2)})
        >>> table.price("Qwen/Qwen2.5-72B-Instruct-Turbo")
        Price(input_per_mtok=1.2, output_per_mtok=1.2)
        >>> table.cost({"unknown-model": TokenUsage(10, 10)}) is None
        True
    """

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = {}
        for model, price in (prices or {}).items():
            self._prices[model] = price
            self._prices.setdefault(_label(model), price)

    def __bool__(self) -> bool:
        return bool(self._prices)

    def price(self, model: str) -> Price | None:
        """The price of ``model`` (a full spec or a label), or ``None`` if unknown."""
        return self._prices.get(model) or self._prices.get(_label(model))

    def cost(self, usage: Mapping[str, TokenUsage]) -> float | None:
        """Dollars for ``usage``; ``None`` when a model that used tokens has no price."""
        total = 0.0
        for model, tokens in usage.items():
            price = self.price(model)
            if price is None:
                if tokens.total_tokens:
                    return None
                continue
            total += price.cost(tokens)
        return total

    def missing(self, models: Iterable[str]) -> list[str]:
        """The models among ``models`` that have no price, sorted."""
        return sorted({model for model in models if self.price(model) is None})

    @classmethod
    def parse(cls, specs: Iterable[str]) -> PriceTable:
        """Prices from ``MODEL=IN,OUT`` strings ($ per million tokens) and JSON or TOML files.

        A file maps a model to ``{"input": IN, "output": OUT}`` or to ``[IN, OUT]``.

        Raises:
            ValueError: naming the malformed entry.
        """
        prices: dict[str, Price] = {}
        for spec in specs:
            if "=" in spec:
                model, _, numbers = spec.rpartition("=")
                prices[model.strip()] = _price(numbers.split(","), where=spec)
            else:
                prices.update(_price_file(Path(spec)))
        return cls(prices)


def _label(model: str) -> str:
    prefix, sep, rest = model.partition(":")
    return rest if sep and "/" not in prefix else model


def _price(value: Any, *, where: str) -> Price:
    if isinstance(value, Mapping):
        value = [value.get("input"), value.get("output")]
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"prices: {where!r}: expected input and output dollars per million tokens, "
            "e.g. 'openai:gpt-4o=2.5,10'"
        ) from None
    if low < 0 or high < 0:
        raise ValueError(f"prices: {where!r}: prices must not be negative")
    return Price(low, high)


def _price_file(path: Path) -> dict[str, Price]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ValueError(f"prices: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"prices: {path} is not valid JSON/TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"prices: {path} must map model names to prices")
    return {str(model): _price(value, where=f"{path}: {model}") for model, value in data.items()}
