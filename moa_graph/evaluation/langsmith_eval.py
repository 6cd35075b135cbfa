"""Run a system through ``langsmith.evaluate``: offline on in-memory examples, or as a real
LangSmith experiment when ``LANGSMITH_API_KEY`` is set.

Every target run is named after the system and tagged ``moa-graph:eval``, ``system:<name>``
and ``kind:<kind>``, with the system's configuration in its metadata (``system_config``); the
experiment's metadata holds the same plus the data set. Answers already in the cache are
reused (and new ones cached), so evaluating after ``run_experiment`` costs no model calls.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from moa_graph.evaluation.datasets import Dataset, Item
    >>> from moa_graph.evaluation.systems import single
    >>> ds = Dataset("demo", (Item(id="demo/1", turns=("2+2?",), gold="4"),), metric="numeric")
    >>> system = single(GenericFakeChatModel(messages=iter([AIMessage("4")])), name="fake")
    >>> results = evaluate_system(system, ds, upload=False)   # doctest: +SKIP
    >>> [row["evaluation_results"]["results"][0].score for row in results]   # doctest: +SKIP
    [1.0]
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from moa_graph.evaluation.cache import ResultCache
from moa_graph.evaluation.datasets import Dataset, Item
from moa_graph.evaluation.judge import Grading, Judge, result_from_dict, result_to_dict
from moa_graph.evaluation.scoring import score_answer
from moa_graph.evaluation.systems import Answer, System

_NAMESPACE = uuid.UUID("6f1c1f4e-8a5e-4c53-9d0e-6d6f612d6772")
API_KEY_VARIABLES = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")


def langsmith_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a LangSmith key is set (then results are uploaded as a real experiment).

    Example:
        >>> langsmith_enabled({}), langsmith_enabled({"LANGSMITH_API_KEY": "lsv2_..."})
        (False, True)
    """
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in API_KEY_VARIABLES)


def example_id(item: Item) -> uuid.UUID:
    """A stable example id for an item (the same in every run and every upload)."""
    return uuid.uuid5(_NAMESPACE, item.id)


def _example_fields(item: Item) -> dict[str, Any]:
    return {
        "inputs": {"item_id": item.id, "turns": list(item.turns)},
        "outputs": {"gold": item.gold, "choices": list(item.choices)},
        "metadata": {key: value for key, value in item.meta.items() if key != "reference"},
    }


def to_examples(dataset: Dataset) -> list[Any]:
    """The items as in-memory ``langsmith.schemas.Example`` objects (no server involved).

    Example:
        >>> from moa_graph.evaluation.datasets import Dataset, Item
        >>> ds = Dataset("d", (Item(id="d/1", turns=("hi",), gold="x"),), "exact")
        >>> to_examples(ds)[0].inputs
        {'item_id': 'd/1', 'turns': ['hi']}
    """
    from langsmith import schemas

    return [schemas.Example(id=example_id(item), **_example_fields(item)) for item in dataset]


def offline_client() -> Any:
    """A LangSmith client that never contacts a server (for ``upload_results=False``)."""
    from langsmith import Client

    return Client(api_key="offline", info={}, auto_batch_tracing=False)


def sync_dataset(client: Any, dataset: Dataset, name: str | None = None) -> str:
    """Make sure LangSmith holds the items as a data set; returns its name.

    The name encodes the data set and the number of items and a hash of their ids, so each
    subset is its own LangSmith data set; it is created (with stable example ids) only once.
    """
    from moa_graph.evaluation.systems import config_hash

    name = name or f"moa-graph-{dataset.name}-{len(dataset)}-{config_hash({'ids': dataset.ids()})}"
    if client.has_dataset(dataset_name=name):
        return name
    created = client.create_dataset(name, description=f"moa_graph evaluation: {dataset.source}")
    client.create_examples(
        dataset_id=created.id,
        examples=[{"id": example_id(item), **_example_fields(item)} for item in dataset],
    )
    return name


def _run_tags(system: System) -> list[str]:
    return ["moa-graph:eval", f"system:{system.name}", f"kind:{system.config.get('kind', '')}"]


def make_target(
    system: System,
    dataset: Dataset,
    cache: ResultCache | None = None,
    *,
    trace_calls: bool = True,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The traced target ``evaluate`` calls: answers the example's item (from the cache if
    there), tagged with the system and carrying its configuration as metadata.

    With ``trace_calls`` the system's LLM calls are traced as child runs carrying the same tags
    and metadata; without it (offline) they are not traced at all, since LangChain's tracer
    would otherwise try to post them to the LangSmith API even in local mode.
    """
    from langsmith import traceable, tracing_context

    items = {item.id: item for item in dataset}
    tags = _run_tags(system)
    metadata = {"system": system.name, "system_config": dict(system.config)}

    @traceable(name=system.name, run_type="chain", tags=tags, metadata=metadata)
    def target(inputs: dict[str, Any]) -> dict[str, Any]:
        item = items[inputs["item_id"]]
        stored = cache.get("answer", (system.key, item.id)) if cache is not None else None
        if stored is not None:
            answer = Answer.from_dict(stored)
        else:
            with tracing_context(
                tags=tags, metadata=metadata, enabled=None if trace_calls else False
            ):
                answer = system.answer(item)
            if cache is not None:
                cache.put("answer", (system.key, item.id), answer.to_dict())
        usage = answer.total_usage
        return {
            "answer": answer.text,
            "turns": list(answer.turns),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "calls": answer.calls,
            "wall_s": answer.wall_s,
            "model_s": answer.model_s,
            "cached": stored is not None,
        }

    return target


def make_evaluators(
    dataset: Dataset,
    judge: Judge | None = None,
    *,
    system: System | None = None,
    cache: ResultCache | None = None,
    trace_calls: bool = True,
) -> list[Callable[..., dict[str, Any]]]:
    """Evaluators for the data set: gold-answer correctness, or the MT-Bench judge's rating;
    plus cost feedback (tokens, calls, wall seconds, and model seconds when known) on every run.

    The judge's gradings are shared with ``run_experiment`` through ``cache`` (keyed by
    ``system``); ``trace_calls=False`` keeps the judge's LLM calls out of tracing (offline).
    """
    from langsmith import tracing_context

    items = {item.id: item for item in dataset}

    def cost(outputs: dict[str, Any]) -> dict[str, Any]:
        keys = ("input_tokens", "output_tokens", "calls", "wall_s", "model_s")
        known = [key for key in keys if outputs.get(key) is not None]
        return {"results": [{"key": key, "score": outputs[key]} for key in known]}

    def correct(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        item = items[inputs["item_id"]]
        score = score_answer(dataset.metric, item, outputs["answer"])
        return {
            "key": "correct",
            "score": score.value,
            "comment": f"extracted {score.extracted!r}, gold {item.gold!r}",
        }

    def mt_bench(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        assert judge is not None
        item = items[inputs["item_id"]]
        key = (judge.key, system.key if system else "", item.id)
        stored = cache.get("grading", key) if cache is not None and system else None
        if stored is not None:
            grading = result_from_dict(stored)
        else:
            with tracing_context(enabled=None if trace_calls else False):
                grading = judge.grade(item, outputs["turns"])
            if cache is not None and system is not None:
                cache.put("grading", key, result_to_dict(grading))
        assert isinstance(grading, Grading)
        return {"key": "mt_bench", "score": grading.score, "comment": grading.judgments[-1]}

    evaluators: list[Callable[..., dict[str, Any]]] = [cost]
    if dataset.metric != "judge":
        evaluators.append(correct)
    elif judge is not None:
        evaluators.append(mt_bench)
    return evaluators


def evaluate_system(
    system: System,
    dataset: Dataset,
    *,
    cache: ResultCache | None = None,
    judge: Judge | None = None,
    upload: bool | None = None,
    client: Any = None,
    experiment_prefix: str | None = None,
    max_concurrency: int | None = 0,
) -> Any:
    """Evaluate one system on the data set with ``langsmith.evaluate``.

    Args:
        system: the system under test.
        dataset: the items (their gold answers go into the examples' outputs).
        cache: answers to reuse and to add to.
        judge: rates answers on data sets without gold answers.
        upload: upload a real experiment; default: only when a LangSmith API key is set.
            Offline, the examples live in memory and ``upload_results=False``.
        client: a ``langsmith.Client`` (default: from the environment, or an offline one).
        experiment_prefix: the experiment's name prefix (default ``moa-graph-<system>``).
        max_concurrency: examples run at once (0: one after another).

    Returns:
        ``langsmith``'s ``ExperimentResults``: iterate for ``run``, ``example`` and
        ``evaluation_results`` of each example.
    """
    from langsmith import evaluate

    upload = langsmith_enabled() if upload is None else upload
    if upload:
        if client is None:
            from langsmith import Client

            client = Client()
        data: Any = sync_dataset(client, dataset)
    else:
        client = client or offline_client()
        data = to_examples(dataset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*upload_results.*beta")
        return evaluate(
            make_target(system, dataset, cache, trace_calls=upload),
            data=data,
            evaluators=make_evaluators(
                dataset, judge, system=system, cache=cache, trace_calls=upload
            ),
            metadata={
                "system": system.name,
                "system_config": dict(system.config),
                "dataset": dataset.name,
                "dataset_source": dataset.source,
                "tags": _run_tags(system),
            },
            experiment_prefix=experiment_prefix or f"moa-graph-{system.name}",
            max_concurrency=max_concurrency,
            client=client,
            upload_results=upload,
        )
