"""``ChatMixtureOfAgents``: the whole mixture as a drop-in LangChain chat model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableParallel,
    RunnableSequence,
    RunnableWithFallbacks,
)
from langchain_core.runnables.config import ensure_config, var_child_runnable_config
from langchain_core.runnables.utils import ConfigurableFieldSpec
from langchain_core.tools import BaseTool
from langchain_core.tracers.base import BaseTracer
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from moa_graph.engine.graph import build_graph, is_answer_token, settle_updates
from moa_graph.engine.plan import MixturePlan, build_plan
from moa_graph.engine.run_choices import RUN_KEYS, RunChoices
from moa_graph.engine.scope import Mixture
from moa_graph.errors import ThreadInUseError
from moa_graph.models import unbound
from moa_graph.settings import SETTINGS, MixtureSettings, settings_help, suggestion
from moa_graph.state import Proposal
from moa_graph.tokens import sum_usage

CONFIG_KEY = "moa"
"""``configurable`` key of per-call choices (``RunChoices``)."""
CHOICES_KWARG = "moa_context"
"""Call keyword that carries the per-call choices to ``_generate`` / ``_stream``."""

THREAD_KWARG = "moa_thread"
"""Call keyword naming the thread a call runs on (see ``ChatMixtureOfAgents.with_checkpointer``)."""

REQUEST_METADATA = "moa_request"
"""Checkpoint metadata key: the digest of the call a kept thread's run answers."""


class ChatMixtureOfAgents(MixtureSettings, BaseChatModel):
    """Mixture-of-Agents (arXiv 2406.04692) as one chat model.

    Proposers answer the conversation concurrently; every proposer of a later layer and the final
    aggregator see all answers of the layer before (the paper's Aggregate-and-Synthesize prompt).
    The result is the aggregator's ``AIMessage``.

    Setup:
        Install the package; hosted models read their provider's key from the environment, the
        embedded models need the ``local`` extra and their weights.

        ```bash
        pip install moa-graph
        export TOGETHER_API_KEY="..."     # together: models; OPENAI_API_KEY for openai: models
        pip install 'moa-graph[local]' && moa-graph models pull local   # no key at all
        ```

    Key init args - the mixture:
        - ``proposers``: models of every proposer layer: a flat list reused in each layer, or one
          list per layer. A model is a ``BaseChatModel``, a ``"provider:model"`` string
          (``together:``, ``openai:``, any provider ``init_chat_model`` knows, ``local:`` for
          the embedded models) or a ``ProposerSpec`` (a model with its own settings).
        - ``aggregator``: the model that writes the final answer (the same forms).
        - ``layers``: counted as in the paper, aggregator included: 3 is MoA, 2 is MoA-Lite.

    Key init args - completion params:
        - ``temperature``: of every model built from a string (default 0.7, as the paper's code).
        - ``max_tokens``: of every model built from a string (default 512).
        - ``stop``: stop words of the final aggregator call.
        - ``aggregation``: how the final answer is made: ``"synthesize"`` (the paper),
          ``"vote"``, ``"weighted_vote"``, ``"rank"``, ``"synthesize_with_votes"``.

    Key init args - client params:
        - ``timeout``: seconds one call may take (default 120).
        - ``max_retries``: retries of transient errors (default 2).
        - ``rate_limits``, ``max_concurrent_calls``, ``min_proposals``, ``first_k``,
          ``layer_timeout``, ...: every setting is a field (all are listed at the end).

    Instantiate:
        ```python
        from moa_graph import ChatMixtureOfAgents

        moa = ChatMixtureOfAgents(
            proposers=["together:Qwen/Qwen2.5-72B-Instruct-Turbo", "openai:gpt-4o-mini"],
            aggregator="together:Qwen/Qwen2.5-72B-Instruct-Turbo",
            layers=3,
        )
        ```

    Invoke:
        ```python
        moa.invoke([("system", "Answer briefly."), ("user", "What is MoA?")])
        # AIMessage(content="...", usage_metadata={...}, response_metadata={...})
        ```

    Stream:
        ```python
        for chunk in moa.stream("Explain MoA in one paragraph."):
            print(chunk.text, end="")     # the aggregator's tokens as it writes them
        ```

    Async:
        ```python
        await moa.ainvoke("What is MoA?")
        async for chunk in moa.astream("What is MoA?"):
            ...
        await moa.abatch(["Question 1", "Question 2"])
        ```

    Tool calling:
        The aggregator gets the tools and may call them; the proposers advise, seeing earlier
        tool calls and results as text.

        ```python
        from pydantic import BaseModel, Field

        class GetWeather(BaseModel):
            '''Get the current weather in a given location.'''
            location: str = Field(..., description="The city, e.g. Paris")

        moa_with_tools = moa.bind_tools([GetWeather])
        moa_with_tools.invoke("What is the weather in Paris?").tool_calls
        # [{"name": "GetWeather", "args": {"location": "Paris"}, "id": "...", ...}]
        ```

    Structured output:
        ```python
        class Joke(BaseModel):
            setup: str
            punchline: str

        moa.with_structured_output(Joke).invoke("Tell me a joke about cats")
        # Joke(setup="...", punchline="...")
        ```

    Token usage:
        ``usage_metadata`` sums every model call of the run, proposers and aggregator:

        ```python
        moa.invoke("Hi").usage_metadata
        # {"input_tokens": 410, "output_tokens": 236, "total_tokens": 646}
        ```

    Response metadata:
        ``response_metadata`` has the aggregator's own metadata plus ``model_name``
        (``"moa:<aggregator model>"``), ``aggregator_model`` and ``proposals``: each proposal's
        layer, index, proposer, model, text, status, error, usage, latency and attempts.
        Strategies, cut-offs and staircase streaming add their own ``moa_*`` keys (votes,
        fallbacks, truncations, rounds).

    Per call, ``configurable={"moa": {...}}`` (``with_config``, a chain's or LangServe's config)
    narrows the mixture with the per-run keys listed at the end (fewer layers, some proposers,
    another aggregator, a seed...); they are checked before any call, like the constructor's
    arguments. A misspelt field is refused, naming the closest one.

    A field assigned after construction (``moa.layers = 3``, ``moa.aggregation = "vote"``,
    ``moa.temperature = 0.2``) takes effect on the next run, as with other chat models; an
    invalid value is refused with the constructor's error naming the field.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> def fake(text):
        ...     return GenericFakeChatModel(messages=iter([AIMessage(text)] * 4))
        >>> moa = ChatMixtureOfAgents(proposers=[fake("4"), fake("four")],
        ...                           aggregator=fake("2 + 2 = 4"), layers=2)
        >>> moa.invoke("What is 2 + 2?").content
        '2 + 2 = 4'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    proposers: list[Any] = Field(min_length=1)
    """Proposer models: a flat list reused in every proposer layer, or one list per layer."""
    aggregator: Any
    """The model that writes the final answer."""
    layers: int | None = None
    """Layers as in the paper, aggregator included (3 = MoA, 2 = MoA-Lite)."""
    stop: list[str] | None = None
    """Stop words of the final aggregator call."""
    streaming: bool = False
    """As other chat models' flag: ``True`` makes ``invoke`` stream the final answer inside
    (callbacks see its tokens); ``False``, once set, never streams."""
    cache: BaseCache | bool | None = False
    """The mixture's own answer is not cached by default (its inner model calls follow
    LangChain's cache settings as usual); ``True`` or a cache caches whole answers too."""

    _plan: MixturePlan = PrivateAttr()
    _graph: CompiledStateGraph[Any, Any, Any, Any] = PrivateAttr()
    _kept: CompiledStateGraph[Any, Any, Any, Any] | None = PrivateAttr(default=None)
    _checkpointer: BaseCheckpointSaver[Any] | None = PrivateAttr(default=None)
    _built_from: tuple[Any, ...] = PrivateAttr(default=())
    """The fingerprint of the fields the plan and graph were built from (``_fingerprint``)."""

    @model_validator(mode="after")
    def _build_mixture(self) -> Self:
        self._build()
        return self

    def _build(self, plan: MixturePlan | None = None) -> None:
        """Build the plan (unless given) and the graphs (the kept one too) from the fields as
        they are now."""
        fingerprint = self._fingerprint()
        if plan is None:
            settings = MixtureSettings.model_construct(  # each one validated as a field of ours
                **{name: getattr(self, name) for name in SETTINGS}
            )
            plan = build_plan(
                self.proposers, aggregator=self.aggregator, layers=self.layers, settings=settings
            )
        checkpointer = getattr(self, "_checkpointer", None)
        self._plan = plan
        # one Mixture for both graphs: a run's plan is worked out once per distinct choice,
        # for checking it, for running it and for reporting its aggregator
        self._mixture = mixture = Mixture(plan)
        self._graph = build_graph(mixture).compile(name="mixture_of_agents")
        self._checkpointer = checkpointer
        self._kept = (
            None
            if checkpointer is None
            else build_graph(mixture).compile(checkpointer=checkpointer, name="mixture_of_agents")
        )
        self._built_from = fingerprint

    def __setattr__(self, name: str, value: Any) -> None:
        """A field that shapes the mixture (``proposers``, ``aggregator``, ``layers``, every
        setting) is validated with the others, as the constructor would, and the plan and graph
        are rebuilt: the next run uses it. An invalid value is refused (``ValueError`` naming
        the field) and changes nothing. Other fields (``stop``, ``streaming``, callbacks...)
        are read by every call anyway.

        Example:
            >>> from langchain_core.language_models import GenericFakeChatModel
            >>> fake = GenericFakeChatModel(messages=iter([]))
            >>> moa = ChatMixtureOfAgents(proposers=[fake, fake], aggregator=fake, layers=2)
            >>> moa.layers = 3
            >>> moa.plan.layers
            3
            >>> try:
            ...     moa.first_k = 0
            ... except ValueError as error:
            ...     print(str(error).splitlines()[1])
            first_k
            >>> moa.first_k is None
            True
        """
        if name not in MIXTURE_FIELDS:
            super().__setattr__(name, value)
            return
        fields = type(self).model_fields
        values = {field: getattr(self, field) for field in self.model_fields_set if field in fields}
        fresh = type(self)(**{**values, name: value})  # raises before anything changes
        super().__setattr__(name, getattr(fresh, name))
        self._build(fresh._plan)

    def _fingerprint(self) -> tuple[Any, ...]:
        """What the plan is built from, compared by value (lists and dicts by their items,
        models and functions by identity): changed in place, it tells the next run to
        rebuild."""
        fields = self.__dict__
        return tuple(_frozen(fields.get(name)) for name in MIXTURE_FIELDS_ORDER)

    def _current(self) -> MixturePlan:
        """The plan, rebuilt first if a field it is built from changed since (a list edited in
        place, ``model_copy(update=...)``): no change is silently ignored."""
        if self._fingerprint() != self._built_from:
            self._build()
        return self._plan

    @property
    def model_name(self) -> str:
        """``"moa:<aggregator model>"``, reported as ``response_metadata["model_name"]``."""
        return f"moa:{self._current().aggregator.model_name}"

    @property
    def plan(self) -> MixturePlan:
        """The validated plan: proposer layers (names, models) and the aggregator."""
        return self._current()

    @property
    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The compiled graph this chat model runs (for inspection and drawing)."""
        self._current()
        return self._graph

    @property
    def _llm_type(self) -> str:
        return "mixture-of-agents"

    def with_checkpointer(self, checkpointer: BaseCheckpointSaver[Any]) -> Self:
        """This mixture, keeping the run of each call given ``moa_thread="<id>"`` in a checkpointer.

        One thread holds one run. Calling again with the same thread id and the same request
        (conversation, ``stop``, per-call choices), as a retry after a lost connection or a dead
        process does from any process sharing the store, finishes an interrupted run from its
        last checkpoint, re-paying no proposer that had answered, and returns a finished run's
        answer again without any model call. Any other request on that thread is refused (each
        checkpoint records a digest of its request). Calls without ``moa_thread`` keep nothing.
        Two calls on one thread must not run at once (``moa-graph serve`` sees to it).

        Raises (at call time):
            ValueError: ``moa_thread`` on a mixture without a checkpointer.
            ThreadInUseError: the thread holds another request's run (a ``ValueError``).

        Example:
            >>> from langchain_core.language_models import GenericFakeChatModel
            >>> from langgraph.checkpoint.memory import InMemorySaver
            >>> fake = GenericFakeChatModel(messages=iter(["Paris.", "Paris, surely."]))
            >>> moa = ChatMixtureOfAgents(proposers=[fake], aggregator=fake, layers=2)
            >>> kept = moa.with_checkpointer(InMemorySaver())
            >>> kept.invoke("Capital of France?", moa_thread="request-1").content
            'Paris, surely.'
            >>> kept.invoke("Capital of France?", moa_thread="request-1").content  # no call
            'Paris, surely.'
        """
        self._current()
        kept = self.model_copy()
        kept._checkpointer = checkpointer
        kept._kept = build_graph(self._mixture).compile(
            checkpointer=checkpointer, name="mixture_of_agents"
        )
        return kept

    def _graph_for(self, thread: str | None) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The graph a call runs: the kept one for a call on a thread."""
        self._current()
        if thread is None:
            return self._graph
        if self._kept is None:
            raise ValueError(
                f"{THREAD_KWARG}: this mixture keeps no threads; "
                "call it through moa.with_checkpointer(saver)"
            )
        return self._kept

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """The mixture's shape, the identifying settings, any other setting not at its default,
        and the refinements of a setting that is on, never those of one that is off (they
        change nothing); the evaluation cache keys results on these."""
        self._current()
        params: dict[str, Any] = {
            "layers": self._plan.layers,
            "proposers": [[slot.name for slot in layer] for layer in self._plan.proposer_layers],
            "aggregator": self._plan.aggregator.name,
        }
        changed = self._plan.options.changed()
        for name, spec in SETTINGS.items():
            if spec.refines is not None:
                included = getattr(self, spec.refines) is not None
            else:
                included = spec.identifying or name in changed
            if included:
                params[name] = spec.identity(getattr(self, name))
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # A call-time ``model`` goes to the aggregator call with the other keyword arguments.
        model_name = kwargs.get("model") or self.model_name
        params = LangSmithParams(
            ls_provider="moa_graph", ls_model_name=model_name, ls_model_type="chat"
        )
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- tools and structured output ----------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools to the aggregator, which alone decides the tool calls.

        The tools are converted exactly as ``aggregator.bind_tools(tools, tool_choice=...,
        **kwargs)`` converts them (OpenAI, Anthropic, ... formats) and sent with the final
        aggregator call; the answer's ``tool_calls`` are the aggregator's. Proposers stay
        tool-free advisors: they see tool calls and results of the conversation as text.

        Raises:
            NotImplementedError: the aggregator does not support tool calling.

        Example:
            >>> from langchain_core.language_models import GenericFakeChatModel
            >>> def add(a: int, b: int) -> int:
            ...     \"\"\"Add two numbers.\"\"\"
            ...     return a + b
            >>> class ToolFake(GenericFakeChatModel):
            ...     def bind_tools(self, tools, *, tool_choice=None, **kwargs):
            ...         return self.bind(tools=[t.__name__ for t in tools], tool_choice=tool_choice)
            >>> fake = ToolFake(messages=iter([]))
            >>> moa = ChatMixtureOfAgents(proposers=[fake], aggregator=fake, layers=2)
            >>> moa.bind_tools([add], tool_choice="any").kwargs
            {'tools': ['add'], 'tool_choice': 'any'}
        """
        model = unbound(self._current().aggregator.model)[0]
        if not isinstance(model, BaseChatModel):
            raise NotImplementedError(
                f"aggregator: {type(model).__name__} is not a chat model with bind_tools"
            )
        try:
            bound = model.bind_tools(tools, tool_choice=tool_choice, **kwargs)
        except NotImplementedError:
            raise NotImplementedError(
                f"aggregator: {self._plan.aggregator.model_name} does not support tool calling"
            ) from None
        if not isinstance(bound, RunnableBinding):
            raise NotImplementedError(
                f"aggregator: {type(model).__name__}.bind_tools returned "
                f"{type(bound).__name__}, not a binding of call arguments"
            )
        return self.bind(**bound.kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """An answer in ``schema`` (pydantic class, TypedDict or JSON schema), from the aggregator.

        Built exactly as ``aggregator.with_structured_output(schema, method=..., ...)`` builds
        it (``None`` takes the aggregator's default method; ``"function_calling"``,
        ``"json_schema"`` and ``"json_mode"`` as the aggregator supports them), with the
        aggregator's call replaced by the whole mixture's: proposers answer as usual and the
        aggregator's structured answer is parsed (a pydantic ``schema`` gives a validated
        instance). Aggregators without their own ``with_structured_output`` use tool calling.

        Example:
            >>> from pydantic import BaseModel
            >>> class Answer(BaseModel):
            ...     value: int
            >>> # ChatMixtureOfAgents(...).with_structured_output(Answer).invoke("2 + 2?")
            >>> # -> Answer(value=4)
        """
        model: Any = unbound(self._current().aggregator.model)[0]
        own = isinstance(model, BaseChatModel) and (
            type(model).with_structured_output is not BaseChatModel.with_structured_output
        )
        if not own:
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method is not None:
            kwargs["method"] = method
        structured = model.with_structured_output(schema, include_raw=include_raw, **kwargs)
        swapped, count = _swap_model(structured, model, self)
        if not count:
            raise NotImplementedError(
                f"aggregator: {type(model).__name__}.with_structured_output built "
                f"{type(structured).__name__}, in which its model call was not found"
            )
        return swapped

    # -- per-call choices ----------------------------------------------------------------------

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        """Declares ``configurable["moa"]`` (so LangServe and ``config_schema`` accept it)."""
        spec = ConfigurableFieldSpec(
            id=CONFIG_KEY,
            annotation=RunChoices | None,
            name="Mixture-of-Agents run choices",
            description=", ".join(RUN_KEYS),
        )
        return [*super().config_specs, spec]

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """As ``BaseChatModel.invoke``, honouring ``configurable["moa"]`` (see the class).

        Example:
            >>> # moa.invoke("Hi", {"configurable": {"moa": {"layers": 2, "proposers": ["a"]}}})
        """
        return super().invoke(input, config, stop=stop, **self._choices(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **self._choices(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **self._choices(config, kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **self._choices(config, kwargs))

    def _choices(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with the config's ``configurable["moa"]``, checked, as ``moa_context``."""
        choices = ensure_config(config).get("configurable", {}).get(CONFIG_KEY)
        if choices is None:
            return kwargs
        if not isinstance(choices, Mapping):
            raise ValueError(f"configurable.{CONFIG_KEY}: expected a mapping, got {choices!r}")
        unknown = sorted(set(choices) - set(RUN_KEYS))
        if unknown:
            raise ValueError(
                f"configurable.{CONFIG_KEY}: unknown key(s) {unknown}; "
                f"{suggestion(unknown[0], RUN_KEYS)}"
            )
        self._current()
        self._mixture.plan_for(choices)  # ValueError naming the key, before any call
        return {**kwargs, CHOICES_KWARG: {**kwargs.get(CHOICES_KWARG, {}), **choices}}

    # -- running -------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run = self._prepare(messages, stop, kwargs, run_manager, CallbackManager)
        run_input = run.input(run.graph.get_state(run.config) if run.thread else None)
        if isinstance(run_input, _FinishedRun):
            return self._result(run_input.values, run.context)
        with _isolated():
            state = run.graph.invoke(run_input, run.config, context=run.context)
        return self._result(state, run.context)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run = self._prepare(messages, stop, kwargs, run_manager, AsyncCallbackManager)
        run_input = run.input(await run.graph.aget_state(run.config) if run.thread else None)
        if isinstance(run_input, _FinishedRun):
            return self._result(run_input.values, run.context)
        with _isolated():
            state = await run.graph.ainvoke(run_input, run.config, context=run.context)
        return self._result(state, run.context)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run = self._prepare(messages, stop, kwargs, run_manager, CallbackManager)
        collector = _StreamCollector(self, run.context)
        run_input = run.input(run.graph.get_state(run.config) if run.thread else None)
        if isinstance(run_input, _FinishedRun):
            collector.settle(run_input.values)
        else:
            stream = run.graph.stream(
                run_input, run.config, context=run.context, stream_mode=["messages", "updates"]
            )
            while True:
                with _isolated():
                    item = next(stream, None)
                if item is None:
                    break
                mode, payload = item
                chunk = collector.accept(mode, payload)
                if chunk is not None:
                    yield chunk
            if run_input is None:  # a resumed run streamed only its end: the thread holds all
                collector.settle(run.graph.get_state(run.config).values)
        yield from collector.finish()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        run = self._prepare(messages, stop, kwargs, run_manager, AsyncCallbackManager)
        collector = _StreamCollector(self, run.context)
        run_input = run.input(await run.graph.aget_state(run.config) if run.thread else None)
        if isinstance(run_input, _FinishedRun):
            collector.settle(run_input.values)
        else:
            stream = run.graph.astream(
                run_input, run.config, context=run.context, stream_mode=["messages", "updates"]
            )
            while True:
                with _isolated():
                    item = await anext(stream, None)
                if item is None:
                    break
                mode, payload = item
                chunk = collector.accept(mode, payload)
                if chunk is not None:
                    yield chunk
            if run_input is None:  # a resumed run streamed only its end: the thread holds all
                collector.settle((await run.graph.aget_state(run.config)).values)
        for chunk in collector.finish():
            yield chunk

    def _prepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        manager_class: type[BaseCallbackManager],
    ) -> _Run:
        """What one call runs: the graph (the kept one on a thread), its config and context."""
        thread = kwargs.pop(THREAD_KWARG, None)
        graph = self._graph_for(thread)
        context = self._context(stop, kwargs)
        request = _request_digest(messages, context) if thread else None
        config = self._inner_config(run_manager, manager_class, thread, request)
        return _Run(graph, config, context, messages, thread, request)

    def _context(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The inner graph's context: the per-call choices, other keywords for the aggregator."""
        aggregator_kwargs = dict(kwargs)
        choices = aggregator_kwargs.pop(CHOICES_KWARG, None) or {}
        if stop or self.stop:
            aggregator_kwargs["stop"] = stop or self.stop
        # proposers' tokens are never shown by this chat model: they need not stream
        return {**choices, "aggregator_kwargs": aggregator_kwargs, "stream_proposers": False}

    def _inner_config(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        manager_class: type[BaseCallbackManager],
        thread: str | None = None,
        request: str | None = None,
    ) -> RunnableConfig:
        """Config for the inner graph, isolated from the caller's.

        Only tracers (LangSmith, run collectors) follow the inner calls, nested under this chat
        model's run; the caller's other handlers see one chat model call. Every key is set
        explicitly so nothing of a surrounding chain or graph (tags, ``configurable`` with a
        parent's checkpoint keys) leaks into the inner graph.
        """
        if run_manager is None:
            callbacks = manager_class(handlers=[])
        else:
            tracers: list[BaseCallbackHandler] = [
                h for h in run_manager.inheritable_handlers if isinstance(h, BaseTracer)
            ]
            callbacks = manager_class(
                handlers=tracers,
                inheritable_handlers=tracers,
                parent_run_id=run_manager.run_id,
                inheritable_tags=run_manager.inheritable_tags,
                inheritable_metadata=run_manager.inheritable_metadata,
            )
        return RunnableConfig(
            callbacks=callbacks,
            tags=[],
            # on a thread, every checkpoint records which request it belongs to
            metadata={REQUEST_METADATA: request} if request else {},
            configurable={"thread_id": thread} if thread else {},
            run_name="mixture_of_agents",
            **self._plan.run_config(),
        )

    def _result(self, state: dict[str, Any], context: Mapping[str, Any]) -> ChatResult:
        final, proposals = state["messages"][-1], state["proposals"]
        message = final.model_copy(
            update={
                "usage_metadata": total_usage(proposals, final),
                "response_metadata": self._response_metadata(final, proposals, context),
            }
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _response_metadata(
        self, final: BaseMessage, proposals: Sequence[Proposal], context: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **final.response_metadata,
            "model_name": self.model_name,
            "aggregator_model": self._mixture.plan_for(context).aggregator.model_name,
            "proposals": list(proposals),
        }


ChatMixtureOfAgents.__doc__ = (ChatMixtureOfAgents.__doc__ or "") + (
    "\n    Per-run keys: "
    + ", ".join(RUN_KEYS)
    + ".\n\n    Settings:\n"
    + settings_help("        ")
    + "\n"
)


class _StreamCollector:
    """Turns the inner graph's stream into the chat model's chunks.

    Aggregator tokens pass through as they come (without their own usage and metadata); the last
    chunk carries the run's total usage and the proposals.
    """

    def __init__(self, model: ChatMixtureOfAgents, context: Mapping[str, Any]) -> None:
        self.model, self.context = model, context
        self.proposals: list[Proposal] = []
        self.final: BaseMessage | None = None
        self.streamed = False

    def accept(self, mode: str, payload: Any) -> ChatGenerationChunk | None:
        if mode == "updates":
            self.proposals, self.final = settle_updates(payload, self.proposals, self.final)
            return None
        message, metadata = payload
        if not is_answer_token(metadata) or not isinstance(message, AIMessage):
            return None
        chunk = _plain_chunk(message)
        if not chunk.content and not chunk.tool_call_chunks and not chunk.additional_kwargs:
            return None  # the aggregator's usage-only or end marker chunks: ours come last
        self.streamed = True
        return ChatGenerationChunk(message=chunk)

    def settle(self, values: Mapping[str, Any]) -> None:
        """Take the answer and proposals from the run's final state (a run kept on a thread)."""
        self.final, self.proposals = values["messages"][-1], list(values["proposals"])

    def finish(self) -> Iterator[ChatGenerationChunk]:
        if self.final is None:
            raise RuntimeError("the mixture ended without an aggregator answer")
        if not self.streamed:
            yield ChatGenerationChunk(message=_plain_chunk(self.final))
        last = AIMessageChunk(
            content="",
            usage_metadata=total_usage(self.proposals, self.final),
            response_metadata=self.model._response_metadata(
                self.final, self.proposals, self.context
            ),
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)


MIXTURE_FIELDS_ORDER: tuple[str, ...] = ("proposers", "aggregator", "layers", *SETTINGS)
"""The fields a ``ChatMixtureOfAgents`` builds its plan and graph from."""
MIXTURE_FIELDS = frozenset(MIXTURE_FIELDS_ORDER)


def _frozen(value: Any) -> Any:
    """``value`` as a comparable fingerprint: containers by their items, plain values as they
    are, anything else (a model, a function) by identity."""
    kind = type(value)
    if value is None or kind in _PLAIN:
        return value
    if kind is list or kind is tuple:
        return ("seq", *map(_frozen, value))
    if kind is dict:
        return ("map", *((key, _frozen(item)) for key, item in value.items()))
    return ("id", id(value))


_PLAIN = frozenset({str, int, float, bool})


def _plain_chunk(message: BaseMessage) -> AIMessageChunk:
    """The aggregator's token as a chunk of ours: content and tool calls, no usage/metadata."""
    tool_call_chunks = getattr(message, "tool_call_chunks", None)
    if tool_call_chunks is None and isinstance(message, AIMessage):
        tool_call_chunks = [
            {
                "name": c["name"],
                "args": json.dumps(c["args"]),
                "id": c["id"],
                "index": i,
                "type": "tool_call_chunk",
            }
            for i, c in enumerate(message.tool_calls)
        ]
    return AIMessageChunk(
        content=message.content,
        id=message.id,
        additional_kwargs=message.additional_kwargs,
        tool_call_chunks=tool_call_chunks or [],
    )


class _FinishedRun(NamedTuple):
    """The state of a thread whose run has finished (its answer is given again)."""

    values: dict[str, Any]


@dataclass(frozen=True)
class _Run:
    """One call of the chat model: the graph it runs, with what, and on which thread."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    config: RunnableConfig
    context: dict[str, Any]
    messages: list[BaseMessage]
    thread: str | None
    request: str | None

    def input(self, held: StateSnapshot | None) -> dict[str, Any] | _FinishedRun | None:
        """What to run, given the thread's state: the conversation (no thread, or a new one),
        ``None`` to finish the thread's interrupted run, or its finished state to answer from.

        Raises:
            ThreadInUseError: the thread holds another request's run.
        """
        if held is None or not held.values:
            return {"messages": self.messages}
        if held.metadata is None or held.metadata.get(REQUEST_METADATA) != self.request:
            raise ThreadInUseError(str(self.thread))
        return None if held.next else _FinishedRun(held.values)


def _request_digest(messages: Sequence[BaseMessage], context: Mapping[str, Any]) -> str:
    """A digest of a call, the same in every process: what each message says (type, content,
    name, tool calls; not ids or metadata, which a caller's own store may not keep) and the
    call's choices (objects JSON cannot write count by their type's name, never a ``repr``
    holding an address)."""
    said = [
        {"type": m.type, "content": m.content, "name": m.name,
         "tool_calls": getattr(m, "tool_calls", None),
         "tool_call_id": getattr(m, "tool_call_id", None)}
        for m in messages
    ]  # fmt: skip
    text = json.dumps({"messages": said, "context": context}, sort_keys=True, default=_stable)
    return hashlib.sha256(text.encode()).hexdigest()


def _stable(value: Any) -> Any:
    """A JSON stand-in for what ``json`` cannot write, equal across processes."""
    if isinstance(value, set | frozenset):
        return sorted(map(str, value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


@contextmanager
def _isolated() -> Iterator[None]:
    """Hide a surrounding chain's config from the inner graph while it runs our code.

    LangGraph merges the ambient ``var_child_runnable_config`` (a chain's callbacks, tags, a
    parent graph's ``configurable``) into the config of a graph it starts; the inner graph gets
    only ``_inner_config``, so the caller's handlers see one chat model call.
    """
    token = var_child_runnable_config.set(None)
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


def _swap_model(runnable: Any, old: Any, new: BaseChatModel) -> tuple[Any, int]:
    """``runnable`` with every call of ``old`` (bound or not) made a call of ``new``.

    Walks sequences, maps and fallbacks, as the providers' ``with_structured_output`` build
    them; returns the new runnable and how many calls were swapped.
    """
    if runnable is old:
        return new, 1
    if isinstance(runnable, RunnableBinding) and runnable.bound is old:
        return new.bind(**runnable.kwargs).with_config(runnable.config), 1
    if isinstance(runnable, RunnableSequence):
        steps = [_swap_model(step, old, new) for step in runnable.steps]
        sequence: Runnable[Any, Any] = RunnableSequence(
            *[step for step, _ in steps], name=runnable.name
        )
        return sequence, sum(count for _, count in steps)
    if isinstance(runnable, RunnableParallel):
        swapped = {key: _swap_model(step, old, new) for key, step in runnable.steps__.items()}
        parallel = RunnableParallel({key: step for key, (step, _) in swapped.items()})
        return parallel, sum(count for _, count in swapped.values())
    if isinstance(runnable, RunnableWithFallbacks):
        first, count = _swap_model(runnable.runnable, old, new)
        others = [_swap_model(step, old, new) for step in runnable.fallbacks]
        fallbacks = first.with_fallbacks(
            [step for step, _ in others],
            exceptions_to_handle=runnable.exceptions_to_handle,
            exception_key=runnable.exception_key,
        )
        return fallbacks, count + sum(n for _, n in others)
    return runnable, 0


def total_usage(proposals: Sequence[Proposal], final: BaseMessage) -> UsageMetadata:
    """Sum the token usage of every proposal and of the aggregator's answer.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        >>> total_usage([{"usage": usage}], AIMessage("x", usage_metadata=usage))["total_tokens"]
        10
    """
    return sum_usage([*(p["usage"] for p in proposals), getattr(final, "usage_metadata", None)])
