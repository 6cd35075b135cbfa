"""Systems under test: one model alone, a MoA recipe, Self-MoA, and the best-of-n LLM ranker.

A ``System`` is a name, a configuration (recorded with every result and trace) and a function
that answers a conversation. ``System.answer(item)`` answers every turn of an item and returns
an ``Answer`` with the texts, token usage by model, wall time, number of LLM calls and, when a
``CallCache`` is the LLM cache, the seconds those calls took (cached ones included).

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from moa_graph.evaluation.datasets import Item
    >>> fake = GenericFakeChatModel(messages=iter([AIMessage("4")]))
    >>> system = single(fake, name="fake")
    >>> answer = system.answer(Item(id="x/1", turns=("2 + 2?",)))
    >>> answer.text, answer.calls
    ('4', 1)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ContextThreadPoolExecutor

from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.evaluation.call_cache import timing_calls
from moa_graph.evaluation.costs import TokenUsage, UsageByModel, add_usage, merge_usage
from moa_graph.evaluation.datasets import Item
from moa_graph.models import ModelLike, resolve_model
from moa_graph.presets import PRESETS, Recipe, get_preset
from moa_graph.presets import self_moa as self_moa_recipe
from moa_graph.settings import DEFAULTS, SETTINGS, MixtureSettings, suggestion
from moa_graph.strategies.rank import instruction_text, parse_ranker_choice, ranker_messages


@dataclass(frozen=True)
class Reply:
    """One turn's answer: the text, token usage by model, LLM calls made and extra details."""

    text: str
    usage: UsageByModel
    calls: int
    extra: dict[str, Any] = field(default_factory=dict)


Responder = Callable[[list[BaseMessage], int | None], Reply]
"""Answers one conversation (the last message is the user's turn) drawing with the seed given
(``None``: the system's own, fixed when it was built)."""

SeedMode = Literal["per-item", "fixed"]
SEED_MODES: tuple[SeedMode, ...] = ("per-item", "fixed")
"""How an experiment's ``seed`` reaches the calls: ``per-item`` derives each item's seed from it
and the item's id (``item_seed``), so items draw independently; ``fixed`` gives every item the
seed itself (sample k of a model then makes the same random draws on every item), as runs made
before per-item seeds did."""


def item_seed(seed: int, item_id: str) -> int:
    """The seed the calls for one item draw with under per-item seeding: a hash of the
    experiment's seed and the item's id, from 0 to 2**31 - 1 (stable across runs and machines).

    Example:
        >>> item_seed(0, "gsm8k/1") == item_seed(0, "gsm8k/1")
        True
        >>> len({item_seed(0, "gsm8k/1"), item_seed(0, "gsm8k/2"), item_seed(1, "gsm8k/1")})
        3
    """
    digest = hashlib.sha256(f"{seed}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


@dataclass(frozen=True)
class Answer:
    """A system's answer to every turn of an item, with its cost in tokens, time and calls.

    ``wall_s`` is the time the answer took; ``model_s`` the seconds of all its model calls, each
    counted at the time it took when made, also when the shared call cache served it (``None``
    when unknown: no ``CallCache``, or a call it cannot time).

    Example:
        >>> a = Answer(turns=("4",), usage={"m": TokenUsage(5, 1)}, wall_s=0.5, calls=1)
        >>> Answer.from_dict(a.to_dict()) == a, a.total_usage
        (True, TokenUsage(input_tokens=5, output_tokens=1))
    """

    turns: tuple[str, ...]
    usage: UsageByModel
    wall_s: float
    calls: int
    extra: tuple[dict[str, Any], ...] = ()
    model_s: float | None = None

    @property
    def text(self) -> str:
        """The answer to the last turn (the one gold answers refer to)."""
        return self.turns[-1] if self.turns else ""

    @property
    def total_usage(self) -> TokenUsage:
        """Tokens of every call, all models together."""
        return sum(self.usage.values(), TokenUsage())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (see ``from_dict``)."""
        return {
            "turns": list(self.turns),
            "usage": {m: [u.input_tokens, u.output_tokens] for m, u in self.usage.items()},
            "wall_s": self.wall_s,
            "calls": self.calls,
            "extra": list(self.extra),
            "model_s": self.model_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        """Rebuild an answer written by ``to_dict``."""
        return cls(
            turns=tuple(data["turns"]),
            usage={m: TokenUsage(int(u[0]), int(u[1])) for m, u in data["usage"].items()},
            wall_s=float(data["wall_s"]),
            calls=int(data["calls"]),
            extra=tuple(data.get("extra", ())),
            model_s=data.get("model_s"),
        )


@dataclass(frozen=True)
class System:
    """A named system: its configuration and the function answering one conversation.

    ``key`` (name plus a hash of the configuration) identifies its results in the cache, so
    changing a setting never reuses answers produced with the old one. With ``item_seeds``
    (the experiment's seed), each item draws with its own ``item_seed``; the configuration
    then records ``seed_mode: "per-item"`` (a configuration without it drew with one fixed seed).
    """

    name: str
    config: Mapping[str, Any]
    respond: Responder = field(repr=False, compare=False)
    item_seeds: int | None = None

    @property
    def seed_mode(self) -> str | None:
        """``"per-item"``, ``"fixed"`` or ``None`` (no seed: the provider's own draws)."""
        if self.config.get("seed") is None:
            return None
        return str(self.config.get("seed_mode", "fixed"))

    @property
    def key(self) -> str:
        """``name#hash``: stable across runs for the same configuration."""
        return f"{self.name}#{config_hash(self.config)}"

    def answer(self, item: Item) -> Answer:
        """Answer each turn of ``item`` in order (later turns see the earlier answers)."""
        started = time.perf_counter()
        seed = None if self.item_seeds is None else item_seed(self.item_seeds, item.id)
        replies: list[Reply] = []
        with timing_calls() as times:
            for _ in item.turns:
                replies.append(self.respond(item.messages([r.text for r in replies]), seed))
        calls = sum(r.calls for r in replies)
        return Answer(
            turns=tuple(r.text for r in replies),
            usage=merge_usage(r.usage for r in replies),
            wall_s=time.perf_counter() - started,
            calls=calls,
            extra=tuple(r.extra for r in replies),
            model_s=times.total if times.calls == calls else None,  # a call not timed: unknown
        )


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a configuration (JSON with sorted keys).

    Example:
        >>> config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
        True
    """
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _call(model: Any, label: str, messages: list[BaseMessage]) -> tuple[str, UsageByModel]:
    message = model.invoke(messages)
    usage = TokenUsage.from_metadata(getattr(message, "usage_metadata", None))
    return message.text, {label: usage}


def _seeding(
    config: dict[str, Any], seed: int | None, seed_mode: SeedMode
) -> tuple[int | None, int | None]:
    """Record ``seed`` in ``config``; returns (the seed to fix at build time, the experiment's
    seed each item derives its own from)."""
    if seed_mode not in SEED_MODES:
        raise ValueError(f"seed_mode: must be one of {', '.join(SEED_MODES)} (got {seed_mode!r})")
    if seed is None:
        return None, None
    config["seed"] = seed
    if seed_mode == "fixed":
        return seed, None
    config["seed_mode"] = seed_mode
    return None, seed


def _with_seed(model: Any, seed: int | None) -> Any:
    return model if seed is None else model.bind(seed=seed)


def _sampling(temperature: float | None, max_tokens: int | None) -> MixtureSettings:
    """The settings a model built from a string is sampled with."""
    return MixtureSettings(temperature=temperature, max_tokens=max_tokens)


def _model_settings(model: ModelLike, temperature: float | None, max_tokens: int | None) -> Any:
    if isinstance(model, BaseChatModel):  # used as configured: record what it says
        return {
            "temperature": getattr(model, "temperature", None),
            "max_tokens": getattr(model, "max_tokens", None),
            "class": type(model).__name__,
        }
    return {"temperature": temperature, "max_tokens": max_tokens}


def single(
    model: ModelLike,
    *,
    name: str | None = None,
    temperature: float | None = DEFAULTS.temperature,
    max_tokens: int | None = DEFAULTS.max_tokens,
    seed: int | None = None,
    seed_mode: SeedMode = "per-item",
) -> System:
    """One model on its own (the per-model baseline).

    Args:
        model: a chat model instance, a ``"provider:model"`` string or a ``ProposerSpec``.
        name: the system's name (default: the model's label).
        temperature: sampling temperature for a model built from a string.
        max_tokens: answer length limit for a model built from a string.
        seed: the experiment's sampling seed (see ``SEED_MODES``; with ``"fixed"``, a mixture
            given the same ``seed`` calls the first sample of this model with it, so the two
            share the call).
        seed_mode: ``"per-item"`` (each item draws with its own seed) or ``"fixed"``.

    Example:
        >>> single("local:smollm2-135m").name
        'smollm2-135m'
    """
    resolved = resolve_model(
        model,
        field="model",
        defaults=MixtureSettings(temperature=temperature, max_tokens=max_tokens),
    )
    label = resolved.model_name
    config = {"kind": "single", "model": label, **_model_settings(model, temperature, max_tokens)}
    fixed, item_seeds = _seeding(config, seed, seed_mode)
    chat = _with_seed(resolved.model, fixed)

    def respond(messages: list[BaseMessage], seed: int | None) -> Reply:
        text, usage = _call(_with_seed(chat, seed), label, messages)
        return Reply(text, usage, calls=1)

    return System(name or label, config, respond, item_seeds)


def moa(
    recipe: Recipe | ChatMixtureOfAgents | str,
    *,
    name: str | None = None,
    kind: str = "moa",
    seed_mode: SeedMode = "per-item",
    **overrides: Any,
) -> System:
    """A Mixture-of-Agents: a ``Recipe``, a preset name, a TOML recipe file, or a built mixture.

    ``overrides`` replace the recipe's settings (``temperature``, ``max_tokens``, ...). With
    ``seed_mode="per-item"`` (the default), a ``seed`` among them (or a built mixture's) is the
    experiment's: each item's run chooses the item's own seed (``item_seed``); ``"fixed"`` keeps
    the one seed for every item. Every proposal (model, status, text) is kept in
    ``Answer.extra``; token usage is split by model.

    Example:
        >>> system = moa("local-tiny")
        >>> system.name, system.config["layers"], system.config["aggregator"]
        ('local-tiny', 2, 'smollm2-135m')
    """
    if isinstance(recipe, ChatMixtureOfAgents):
        if overrides:
            raise ValueError("moa: overrides need a recipe, not a built ChatMixtureOfAgents")
        mixture, recipe_name = recipe, "custom"
    else:
        if isinstance(recipe, str):
            recipe = _recipe(recipe)
        mixture, recipe_name = recipe.chat_model(**overrides), recipe.name

    params = dict(mixture._identifying_params)
    config = {"kind": kind, "recipe": recipe_name, **params}
    seed = config.pop("seed", None)
    _, item_seeds = _seeding(config, seed, seed_mode)

    def respond(messages: list[BaseMessage], seed: int | None) -> Reply:
        run: RunnableConfig | None = (
            None if seed is None else {"configurable": {"moa": {"seed": seed}}}
        )
        return _mixture_reply(mixture.invoke(messages, run))

    return System(name or recipe_name, config, respond, item_seeds)


def _recipe(spec: str) -> Recipe:
    if spec in PRESETS:
        return get_preset(spec)
    if spec.endswith(".toml"):
        from moa_graph.presets import load_recipe

        return load_recipe(spec)
    raise ValueError(f"moa: {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a .toml file")


def _mixture_reply(message: BaseMessage) -> Reply:
    metadata = message.response_metadata
    proposals = list(metadata.get("proposals") or [])
    usage: UsageByModel = {}
    for proposal in proposals:
        add_usage(usage, str(proposal["model"]), TokenUsage.from_metadata(proposal.get("usage")))
    total = TokenUsage.from_metadata(getattr(message, "usage_metadata", None))
    spent = sum(usage.values(), TokenUsage())
    aggregator = str(metadata.get("aggregator_model") or metadata.get("model_name") or "moa")
    add_usage(
        usage,
        aggregator,
        TokenUsage(
            max(0, total.input_tokens - spent.input_tokens),
            max(0, total.output_tokens - spent.output_tokens),
        ),
    )
    aggregator_calls = int(metadata.get("moa_aggregator_calls", 1))
    calls = aggregator_calls + sum(int(p.get("attempts", 1)) for p in proposals)
    kept = [
        {key: p.get(key) for key in ("layer", "index", "model", "status", "text", "error")}
        | ({"confidence": p["confidence"]} if p.get("confidence") is not None else {})
        for p in proposals
    ]
    extra: dict[str, Any] = {"proposals": kept}
    if "moa_votes" in metadata:  # what the vote saw: lets a study re-weigh it offline
        extra["moa_votes"] = metadata["moa_votes"]
    return Reply(message.text, usage, calls, extra)


def self_moa(
    model: ModelLike,
    n: int = 6,
    *,
    layers: int = 2,
    name: str | None = None,
    temperature: float | None = DEFAULTS.temperature,
    max_tokens: int | None = DEFAULTS.max_tokens,
    seed_mode: SeedMode = "per-item",
    **options: Any,
) -> System:
    """Self-MoA: one model sampled ``n`` times, its answers aggregated by the same model.

    ``options`` are mixture settings (``aggregation="vote"``, ``seed``, ...; see
    ``create_moa_graph``); ``seed_mode`` is as for ``moa``.

    Example:
        >>> system = self_moa("local:smollm2-135m", n=3)
        >>> system.name, system.config["kind"]
        ('self-moa-smollm2-135m-x3', 'self-moa')
    """
    recipe = self_moa_recipe(model, n, layers=layers)
    label = resolve_model(model, field="model", defaults=MixtureSettings()).model_name
    sampling: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
    overrides = {key: value for key, value in sampling.items() if value is not None}
    return moa(recipe, name=name or f"self-moa-{label}-x{n}", kind="self-moa",
               seed_mode=seed_mode, **overrides, **options)  # fmt: skip


def best_of_n_ranker(
    model: ModelLike,
    n: int = 4,
    *,
    ranker: ModelLike | None = None,
    name: str | None = None,
    temperature: float | None = DEFAULTS.temperature,
    max_tokens: int | None = DEFAULTS.max_tokens,
    ranker_max_tokens: int | None = 32,
    seed: int | None = None,
    seed_mode: SeedMode = "per-item",
) -> System:
    """Best-of-n with an LLM ranker (the MoA paper's baseline): sample ``model`` n times, let
    ``ranker`` (default: the same model, greedy) pick one answer, and return it verbatim.

    An unreadable ranker reply falls back to the first candidate; ``Answer.extra`` records the
    candidates, the chosen index and whether the ranker's reply could be read. With ``seed``,
    candidate k is drawn with the item's seed (``seed_mode``, as for ``single``) plus k, so a
    shared call cache keeps the n draws distinct.

    Example:
        >>> best_of_n_ranker("local:smollm2-135m", n=3).config["ranker"]
        'smollm2-135m'
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: the number of candidates must be an integer >= 1 (got {n!r})")
    sampler = resolve_model(
        model,
        field="model",
        defaults=MixtureSettings(temperature=temperature, max_tokens=max_tokens),
    )
    judge = resolve_model(
        model if ranker is None else ranker,
        field="ranker",
        defaults=MixtureSettings(temperature=0.0, max_tokens=ranker_max_tokens),
    )

    config = {
        "kind": "best-of-n",
        "model": sampler.model_name,
        "n": n,
        "ranker": judge.model_name,
        "ranker_max_tokens": ranker_max_tokens,
        **_model_settings(model, temperature, max_tokens),
    }
    fixed, item_seeds = _seeding(config, seed, seed_mode)

    def respond(messages: list[BaseMessage], item: int | None) -> Reply:
        first = fixed if item is None else item
        samplers = [_with_seed(sampler.model, None if first is None else first + k)
                    for k in range(n)]  # fmt: skip
        with ContextThreadPoolExecutor(max_workers=n) as pool:
            outputs = list(pool.map(lambda model: model.invoke(messages), samplers))
        candidates = [message.text for message in outputs]
        usage: UsageByModel = {}
        for message in outputs:
            used = TokenUsage.from_metadata(getattr(message, "usage_metadata", None))
            add_usage(usage, sampler.model_name, used)
        verdict, ranker_usage = _call(
            judge.model, judge.model_name, ranker_messages(instruction_text(messages), candidates)
        )
        usage = merge_usage([usage, ranker_usage])
        parsed = parse_ranker_choice(verdict, n)
        chosen = 0 if parsed is None else parsed
        extra = {
            "candidates": candidates,
            "chosen": chosen,
            "ranker_reply": verdict,
            "ranker_parsed": parsed is not None,
        }
        return Reply(candidates[chosen], usage, n + 1, extra)

    return System(name or f"best-of-{n}-{sampler.model_name}", config, respond, item_seeds)


SYSTEM_KINDS = ("single", "moa", "self-moa", "best-of-n")
MIXTURES = ("moa", "self-moa")
"""The kinds that take mixture settings as options."""
KIND_OPTIONS = {"single": ("name", "temperature", "max_tokens"), "moa": ("name",),
                "self-moa": ("name", "n", "layers"),
                "best-of-n": ("name", "n", "ranker", "temperature", "max_tokens")}  # fmt: skip
"""The options of each kind besides the mixture settings (which include ``temperature`` and
``max_tokens``)."""


OPTION_ALIASES = {"extractor": "answer_extractor", "shuffle": "shuffle_references",
                  "window": "aggregation_window"}  # fmt: skip
"""Short names a ``moa`` / ``self-moa`` spec may use for some settings."""


def _mixture_options(options: dict[str, str], extractor: str | None) -> dict[str, Any]:
    """Take the mixture settings (any setting by name, or an alias) out of ``options``."""
    chosen: dict[str, Any] = {}
    for key in list(options):
        name = OPTION_ALIASES.get(key, key)
        if name in SETTINGS:
            chosen[name] = SETTINGS[name].parse(options.pop(key), key)
    if extractor is not None:
        chosen.setdefault("answer_extractor", extractor)
    return chosen


def _sampling_options(spec: str, own: dict[str, str]) -> dict[str, Any]:
    """A ``single`` / ``best-of-n`` spec's own ``temperature`` and ``max_tokens``, as numbers."""
    chosen: dict[str, Any] = {}
    for key, kind in (("temperature", float), ("max_tokens", int)):
        if key in own:
            try:
                chosen[key] = kind(own[key])
            except ValueError:
                raise ValueError(
                    f"system {spec!r}: {key} must be a number, got {own[key]!r}"
                ) from None
    return chosen


def parse_system(
    spec: str,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    seed_mode: SeedMode = "per-item",
    answer_extractor: str | None = None,
) -> System:
    """Build a system from a command-line spec ``KIND:VALUE[,key=value...]``.

    - ``single:MODEL`` (or just ``MODEL``): one model, e.g. ``single:local:smollm2-135m``;
      ``temperature=0`` answers greedily.
    - ``moa:PRESET`` / ``moa:FILE.toml`` (or just ``PRESET``): a mixture recipe.
    - ``self-moa:MODEL,n=6[,layers=2]``: Self-MoA.
    - ``best-of-n:MODEL,n=4[,ranker=MODEL]``: the LLM-ranker baseline.

    Every kind takes ``name=...``; ``moa`` and ``self-moa`` also take any mixture setting by
    name (``aggregation=vote``, ``first_k=2``, ``early_exit=true``; ``extractor``, ``shuffle``
    and ``window`` are short for ``answer_extractor``, ``shuffle_references`` and
    ``aggregation_window``); ``single`` and ``best-of-n`` take ``temperature`` and
    ``max_tokens``. The ``temperature`` / ``max_tokens`` arguments (default: the settings'
    defaults) apply to models built from strings whose spec does not set its own; a ``moa``
    recipe keeps its own settings unless they are given. ``seed`` goes to every system (a model's
    calls, a mixture's samples and shuffles), per item or fixed as ``seed_mode`` says;
    ``answer_extractor`` is the mixtures' default
    extractor (the data set's kind of answer).

    Example:
        >>> parse_system("best-of-n:local:smollm2-135m,n=3,name=bo3").name
        'bo3'
        >>> parse_system("local-tiny").config["kind"]
        'moa'
        >>> parse_system("self-moa:local:smollm2-135m,n=3,aggregation=vote").config["aggregation"]
        'vote'
    """
    head, _, rest = spec.partition(":")
    if head in SYSTEM_KINDS and rest:
        kind, body = head, rest
    elif spec.split(",")[0] in PRESETS or spec.split(",")[0].endswith(".toml"):
        kind, body = "moa", spec
    else:
        kind, body = "single", spec
    value, *pairs = body.split(",")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, setting = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"system {spec!r}: expected key=value after ',', got {pair!r}")
        options[key.strip()] = setting.strip()
    own = {key: options.pop(key) for key in KIND_OPTIONS[kind] if key in options}
    mixture: dict[str, Any] = {"seed": seed} if seed is not None else {}
    if kind in MIXTURES:
        mixture.update(_mixture_options(options, answer_extractor))
    if options:  # refused before any model is built
        key = sorted(options)[0]
        known = [*KIND_OPTIONS[kind], *((*OPTION_ALIASES, *SETTINGS) if kind in MIXTURES else ())]
        raise ValueError(f"system {spec!r}: unknown option {key!r}; {suggestion(key, known)}")
    given: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
    chosen = {key: mixture.pop(key) for key in given if key in mixture}  # the system's own
    sampling: dict[str, Any] = {
        key: getattr(DEFAULTS, key) if set_ is None else set_ for key, set_ in given.items()
    }
    sampling.update(chosen)
    sampling.update(_sampling_options(spec, own))
    name = own.get("name")
    if kind == "single":
        return single(value, name=name, seed=seed, seed_mode=seed_mode, **sampling)
    if kind == "moa":
        overrides = {key: setting for key, setting in given.items() if setting is not None}
        return moa(value, name=name or Path(value).stem, seed_mode=seed_mode, **overrides,
                   **chosen, **mixture)  # fmt: skip
    if kind == "self-moa":
        n, layers = int(own.get("n", "6")), int(own.get("layers", "2"))
        return self_moa(value, n, layers=layers, name=name, seed_mode=seed_mode, **sampling,
                        **mixture)  # fmt: skip
    return best_of_n_ranker(value, int(own.get("n", "4")), ranker=own.get("ranker"), name=name,
                            seed=seed, seed_mode=seed_mode, **sampling)  # fmt: skip
