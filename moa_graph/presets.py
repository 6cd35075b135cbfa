"""Named recipes: the paper's configurations, Together's quickstart, Self-MoA and local ones.

Each function returns a ``Recipe``; ``recipe.chat_model()`` builds a ``ChatMixtureOfAgents`` and
``recipe.graph()`` an uncompiled graph. Remote recipes need ``TOGETHER_API_KEY`` (and
``OPENAI_API_KEY`` for the GPT-4o aggregator) when the models are built, not before.
``load_recipe(path)`` reads a recipe from a TOML file (the command line's ``--config``).

Example:
    >>> recipe = moa_lite()
    >>> recipe.layers, len(recipe.proposers), recipe.aggregator
    (2, 6, 'together:Qwen/Qwen1.5-72B-Chat')
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.graph import StateGraph

from moa_graph.extras import require
from moa_graph.models import ModelLike, ProposerSpec, missing_local_models
from moa_graph.settings import SETTINGS, check_known

if TYPE_CHECKING:
    from moa_graph.chat_model import ChatMixtureOfAgents

PAPER_PROPOSERS: tuple[str, ...] = (
    "together:Qwen/Qwen1.5-110B-Chat",
    "together:Qwen/Qwen1.5-72B-Chat",
    "together:microsoft/WizardLM-2-8x22B",
    "together:meta-llama/Llama-3-70b-chat-hf",
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1",
    "together:databricks/dbrx-instruct",
)
"""The six open-source proposers of the paper (section 3.1), as Together model ids."""


SHAPE_KEYS = ("proposers", "aggregator", "layers")
"""What a recipe gives besides its settings: the mixture's models and layers."""


@dataclass(frozen=True)
class Recipe:
    """A named mixture configuration: models, layers and settings (``options``).

    Option names are checked at once (a misspelt one is refused, naming the closest setting);
    values are checked like the constructor's when the mixture is built.

    Example:
        >>> moa_lite().with_options(first_k=3).options["first_k"]
        3
        >>> moa_lite().with_options(first_kk=3)
        Traceback (most recent call last):
        ...
        ValueError: first_kk: not a setting; did you mean 'first_k'?
    """

    name: str
    description: str
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]]
    aggregator: ModelLike
    layers: int | None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_known(self.options, SETTINGS, what="setting")

    def chat_model(self, **overrides: Any) -> ChatMixtureOfAgents:
        """Build the recipe as a ``ChatMixtureOfAgents`` (``overrides`` replace its settings)."""
        from moa_graph.chat_model import ChatMixtureOfAgents

        self.check_local_models()
        return ChatMixtureOfAgents(**self._arguments(overrides))

    def graph(self, **overrides: Any) -> StateGraph[Any, Any, Any, Any]:
        """Build the recipe as an uncompiled ``StateGraph`` (see ``create_moa_graph``)."""
        from moa_graph.engine.graph import create_moa_graph

        self.check_local_models()
        arguments = self._arguments(overrides)
        return create_moa_graph(arguments.pop("proposers"), **arguments)

    def local_models(self) -> list[str]:
        """The embedded models the recipe uses (``local:`` names without the prefix), in order.

        Example:
            >>> local().local_models()
            ['qwen2.5-coder-1.5b', 'qwen2.5-coder-0.5b', 'smollm2-135m']
        """
        layers = [self.proposers] if _flat(self.proposers) else self.proposers
        models = [*(model for layer in layers for model in layer), self.aggregator]
        names = [_local_name(model) for model in models]
        return list(dict.fromkeys(name for name in names if name is not None))

    def check_local_models(self) -> None:
        """Refuse, before anything is built, a recipe whose embedded models cannot run here:
        ``MissingExtraError`` without the ``local`` extra, ``ValueError`` naming the command
        that installs the missing models (``moa-graph models pull <preset>``)."""
        names = self.local_models()
        if not names:
            return
        require("local", f"the {self.name!r} recipe's embedded models")
        missing = missing_local_models(names)
        if missing:
            target = self.name if self.name in PRESETS else " ".join(missing)
            raise ValueError(
                f"{self.name}: embedded model(s) not installed: {', '.join(missing)}; install "
                f"them with: moa-graph models pull {target}"
            )

    def with_options(self, **options: Any) -> Recipe:
        """A copy with more settings, e.g. ``recipe.with_options(min_proposals=2)``."""
        return replace(self, options={**self.options, **options})

    def _arguments(self, overrides: dict[str, Any]) -> dict[str, Any]:
        check_known(overrides, [*SHAPE_KEYS, *SETTINGS], what="setting")
        arguments: dict[str, Any] = {
            "proposers": list(self.proposers),
            "aggregator": self.aggregator,
            "layers": self.layers,
            **self.options,
        }
        arguments.update(overrides)
        return arguments


def _flat(proposers: Any) -> bool:
    return not any(isinstance(item, list | tuple) for item in proposers)


def _local_name(model: Any) -> str | None:
    """The embedded model a model-like names (``local:NAME``), else ``None``."""
    if isinstance(model, ProposerSpec):
        model = model.model
    if isinstance(model, str) and model.startswith("local:"):
        return model.removeprefix("local:")
    return None


def moa() -> Recipe:
    """The paper's MoA: six proposers in two layers, Qwen1.5-110B-Chat aggregating (3 layers).

    Reproduces the "MoA" rows of the paper's Table 2 (AlpacaEval 2.0 LC win rate 65.1%,
    MT-Bench 9.25). Sampling as in the authors' evaluation scripts: temperature 0.7, 2048 tokens.
    """
    return Recipe(
        name="moa",
        description="Paper MoA: 6 open-source proposers x 2 layers, Qwen1.5-110B-Chat aggregator",
        proposers=PAPER_PROPOSERS,
        aggregator="together:Qwen/Qwen1.5-110B-Chat",
        layers=3,
        options={"temperature": 0.7, "max_tokens": 2048},
    )


def moa_lite() -> Recipe:
    """MoA-Lite: the same six proposers in one layer, Qwen1.5-72B-Chat aggregating (2 layers).

    Reproduces the "MoA-Lite" rows of the paper's Table 2 (AlpacaEval 2.0 LC win rate 59.3%).
    """
    return Recipe(
        name="moa-lite",
        description="Paper MoA-Lite: 6 open-source proposers x 1 layer, Qwen1.5-72B aggregator",
        proposers=PAPER_PROPOSERS,
        aggregator="together:Qwen/Qwen1.5-72B-Chat",
        layers=2,
        options={"temperature": 0.7, "max_tokens": 2048},
    )


def moa_gpt4o() -> Recipe:
    """MoA w/ GPT-4o: the paper's two open-source proposer layers, GPT-4o aggregating.

    Reproduces the "MoA w/ GPT-4o" rows of the paper's Table 2 (AlpacaEval 2.0 LC win rate
    65.7%, MT-Bench 9.40). Needs ``TOGETHER_API_KEY`` and ``OPENAI_API_KEY``.
    """
    return Recipe(
        name="moa-gpt4o",
        description="Paper MoA with GPT-4o as the final aggregator",
        proposers=PAPER_PROPOSERS,
        aggregator="openai:gpt-4o",
        layers=3,
        options={"temperature": 0.7, "max_tokens": 2048},
    )


def together_quickstart() -> Recipe:
    """Together's 2025 quickstart (``moa.py`` of togethercomputer/MoA): 4 proposers, 2 layers.

    Proposers at temperature 0.7 and 512 tokens, Qwen2.5-72B-Instruct-Turbo aggregating.
    """
    return Recipe(
        name="together",
        description="Together quickstart: 4 current open models, Qwen2.5-72B aggregator",
        proposers=(
            "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-Coder-32B-Instruct",
            "together:microsoft/WizardLM-2-8x22B",
        ),
        aggregator="together:Qwen/Qwen2.5-72B-Instruct-Turbo",
        layers=2,
        options={"temperature": 0.7, "max_tokens": 512},
    )


def self_moa(model: ModelLike, n: int = 6, *, layers: int = 2) -> Recipe:
    """Self-MoA: one model sampled ``n`` times, then aggregated by the same model.

    Self-MoA (Li et al., 2025, "Rethinking Mixture-of-Agents", arXiv 2502.00674) reports that
    sampling the single best model often beats mixing different models.

    Example:
        >>> self_moa("together:Qwen/Qwen2.5-72B-Instruct-Turbo", n=4).proposers[0].samples
        4
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: the number of samples must be an integer >= 1 (got {n!r})")
    spec = model if isinstance(model, ProposerSpec) else ProposerSpec(model=model)  # type: ignore[arg-type]
    return Recipe(
        name="self-moa",
        description=f"Self-MoA: {n} samples of one model, aggregated by it",
        proposers=(spec.model_copy(update={"samples": n}),),
        aggregator=spec.model,
        layers=layers,
    )


def local() -> Recipe:
    """Embedded models, no key: three small proposers, Qwen2.5-Coder-1.5B aggregating (2 layers).

    Staircase streaming is on (first chunks of 8 tokens, growing eightfold), so the answer starts
    within seconds while the proposers still write; ``staircase=None`` turns it off
    (``--staircase none`` on the command line).
    """
    return Recipe(
        name="local",
        description="Local: SmolLM2-135M, Qwen2.5-Coder-0.5B, Qwen2.5-Coder-1.5B -> Qwen 1.5B",
        proposers=(
            "local:qwen2.5-coder-1.5b",
            "local:qwen2.5-coder-0.5b",
            "local:smollm2-135m",
        ),
        aggregator="local:qwen2.5-coder-1.5b",
        layers=2,
        # staircase chunks of 8, 64, 512... tokens: the answer starts after the first 8 tokens
        # of each proposer. On shared CPU cores nothing overlaps and every round reads the
        # prompt's changed tail again (prefill is only ~2.5x decoding there), so few rounds keep
        # the wall time near staircase off (docs/guides/staircase.md).
        options={"temperature": 0.7, "max_tokens": 256, "staircase": 8, "staircase_growth": 8.0},
    )


def local_vote() -> Recipe:
    """Short answers, no key: three samples of Qwen2.5-Coder-1.5B, decided by majority vote.

    The final numbers (``answer_extractor="number"``; pass ``"choice"`` for option letters) are
    counted and the first sample stating the most common one is the answer; only a tie costs an
    aggregator call. See the README's experiments for how it compares with the model alone.

    Example:
        >>> local_vote().options["aggregation"]
        'vote'
    """
    return Recipe(
        name="local-vote",
        description="Local vote: 3 samples of Qwen2.5-Coder-1.5B, majority of final answers",
        proposers=(ProposerSpec(model="local:qwen2.5-coder-1.5b", samples=3),),
        aggregator="local:qwen2.5-coder-1.5b",
        layers=2,
        options={
            "temperature": 0.7,
            "max_tokens": 320,
            "aggregation": "vote",
            "answer_extractor": "number",
            "seed": 0,
        },
    )


def local_tiny() -> Recipe:
    """The smallest local mixture, for smoke runs: two SmolLM2 samples, SmolLM2 aggregating."""
    return Recipe(
        name="local-tiny",
        description="Local tiny: 2 samples of SmolLM2-135M aggregated by SmolLM2-135M",
        proposers=(ProposerSpec(model="local:smollm2-135m", samples=2),),
        aggregator="local:smollm2-135m",
        layers=2,
        options={"temperature": 0.7, "max_tokens": 96},
    )


PRESETS: dict[str, Callable[[], Recipe]] = {
    "moa": moa,
    "moa-lite": moa_lite,
    "moa-gpt4o": moa_gpt4o,
    "together": together_quickstart,
    "local": local,
    "local-vote": local_vote,
    "local-tiny": local_tiny,
}
"""Recipes by name, as the command line's ``--preset`` knows them."""


def default_preset_name(environ: dict[str, str] | None = None) -> str:
    """``together`` when ``TOGETHER_API_KEY`` is set, else the embedded ``local`` preset.

    Example:
        >>> default_preset_name({}), default_preset_name({"TOGETHER_API_KEY": "k"})
        ('local', 'together')
    """
    environ = dict(os.environ) if environ is None else environ
    return "together" if environ.get("TOGETHER_API_KEY") else "local"


def choose_recipe(
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    environ: dict[str, str] | None = None,
    own_models: bool = False,
) -> Recipe:
    """The recipe a command or a server is given: a TOML file, a preset, or else the default
    preset (``default_preset_name`` of ``environ``); both at once is a ``ValueError``.

    ``own_models`` says the caller replaces every model (its own proposers and aggregator). With
    no preset or config chosen, the default preset then gives its shape only, not its settings:
    those are tuned for its own models (the ``local`` preset's staircase streaming, for one,
    needs an aggregator known to continue its own partial answer).

    Example:
        >>> choose_recipe(preset="moa-lite").name
        'moa-lite'
        >>> choose_recipe(environ={}, own_models=True).options
        {}
    """
    if preset and config:
        raise ValueError("give either a preset or a config file, not both")
    if config:
        return load_recipe(config)
    if preset:
        return get_preset(preset)
    default = get_preset(default_preset_name(environ))
    if own_models:
        return replace(default, name="custom", description="your own models", options={})
    return default


def get_preset(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is a ``ValueError`` listing the known ones.

    Example:
        >>> get_preset("moa").layers
        3
    """
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"preset: unknown {name!r}; known: {', '.join(PRESETS)}") from None


RECIPE_KEYS = ("name", "description", *SHAPE_KEYS, *SETTINGS)
"""Keys of a TOML recipe: a name, a description, the shape and every setting."""


def load_recipe(path: str | Path) -> Recipe:
    """Load a TOML recipe: ``proposers``, ``aggregator``, optionally ``layers``, ``name``,
    ``description`` and any setting (``first_k = 2``; a function setting as ``"module:function"``).

    An unreadable file, a missing model or an unknown key is a ``ValueError``; setting values
    are checked when the mixture is built.

    Example file::

        layers = 2
        aggregator = "local:qwen2.5-coder-1.5b"
        temperature = 0.7
        max_tokens = 256
        aggregation = "vote"
        answer_extractor = "number"
        rate_limits = { together = 5 }
        proposers = ["local:qwen2.5-coder-0.5b", { model = "local:smollm2-135m", samples = 2 }]

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
    check_known(data, RECIPE_KEYS, what="recipe key", where=f"config: {path}: ")
    for required in ("proposers", "aggregator"):
        if required not in data:
            raise ValueError(f"config: {path} has no '{required}'")
    return Recipe(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", f"recipe from {path}")),
        proposers=data["proposers"],
        aggregator=data["aggregator"],
        layers=data.get("layers"),
        options={key: data[key] for key in SETTINGS if key in data},
    )
