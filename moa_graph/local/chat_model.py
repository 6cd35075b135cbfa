"""Small LLMs running in-process on CPU (llama.cpp via ``xllamacpp``) as LangChain chat models.

Example:
    >>> from moa_graph.local import ChatLocalModel
    >>> llm = ChatLocalModel(model="smollm2-135m", max_tokens=32)   # cheap: loads lazily
    >>> llm.invoke("Say hi").content  # doctest: +SKIP
    'Hi! How can I help you today?'
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    UsageMetadata,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, field_validator, model_validator

from moa_graph.backend import BackendTraits, Continuation
from moa_graph.extras import require
from moa_graph.local.hub import PREFIX as HUB_PREFIX
from moa_graph.local.turns import Share, Turns
from moa_graph.local.weights import (
    LocalModelError,
    LocalModelSpec,
    check_installed,
    ensure_model_file,
    resolve_model,
)

__all__ = ["ChatLocalModel", "create_local_chat_model", "unload_local_models"]

#: Call-time kwargs forwarded to llama.cpp's OpenAI-style request.
_REQUEST_KWARGS = frozenset(
    {
        "temperature",
        "max_tokens",
        "seed",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)
PROMPT_CACHE_MIB = 1024
"""Host RAM for llama.cpp's prompt cache, per loaded model (at most; about 29 KB a token of
context for Qwen2.5-Coder-1.5B)."""
_NON_TEXT_BLOCKS = frozenset({"image", "image_url", "audio", "input_audio", "file", "video"})
_DONE = object()


OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
"""OpenMP settings for xllamacpp's llama.cpp, which splits each step over its threads with
OpenMP (libgomp): set when the first model loads, unless the environment sets them already."""


def _openmp_defaults() -> None:
    """Keep llama.cpp's threads waiting actively for each other once several models are loaded.

    Each loaded model computes from its own thread with its own OpenMP team. Once libgomp
    manages more threads than there are cores (from the second model on, on two cores), it
    cuts a waiting thread's spin from 300,000 to 100 turns before it sleeps, so llama.cpp's
    threads sleep and wake at every one of the hundreds of barriers of a token: measured here,
    Qwen2.5-Coder-1.5B fell from 18 to 12 tokens a second once the two other embedded models
    were loaded, with a core idle a fifth of the time. ``OMP_WAIT_POLICY=ACTIVE`` raises that
    cut to 1,000 turns, enough to keep most of the speed (16.8 tokens a second with all three
    loaded against 18.6 alone, ``python -m benchmarks.local_models``),
    and ``GOMP_SPINCOUNT`` keeps the usual 300,000 turns (a few milliseconds) otherwise, so an
    idle model does not keep a core busy. libgomp reads them once, when it is loaded: a process
    that loaded it before (another OpenMP library) keeps its own settings.
    """
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_slots_guard = threading.Lock()
_slots: dict[int, Turns] = {}


def _compute_slots(n_threads: int) -> Turns:
    """Turns of the models using ``n_threads`` threads: cores // n_threads generations at once."""
    with _slots_guard:
        if n_threads not in _slots:
            _slots[n_threads] = Turns(max(1, _default_threads() // n_threads))
        return _slots[n_threads]


class _Engine:
    """One loaded llama.cpp model, generating for up to ``slots`` requests (or samples of one
    request) at once in one batch; further requests queue."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, slots: int = 1) -> None:
        _openmp_defaults()
        try:
            import xllamacpp
        except ImportError as exc:
            raise LocalModelError(
                "Local models need xllamacpp: pip install 'xllamacpp==2026.10.11549' "
                "(or pip install 'moa-graph[local]')"
            ) from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = slots  # llama.cpp decodes its slots' tokens in one batch
        params.kv_unified = True  # one KV cache of n_ctx tokens shared by the slots as needed
        params.n_threads_http = 1
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.verbosity = 0  # llama.cpp logs off
        # llama.cpp's host-RAM prompt cache: a prompt evicted from the slot by another request
        # is restored, not prefilled again (staircase rounds alternate between prompts).
        params.cache_ram_mib = PROMPT_CACHE_MIB
        params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        # xllamacpp always opens a loopback HTTP port; a random key keeps other processes out
        # (in-process calls do not need it).
        params.api_keys = [secrets.token_hex(16)]
        started = time.perf_counter()
        try:
            self.server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise LocalModelError(f"llama.cpp could not load {str(path)!r}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.path = path
        self.n_threads = n_threads
        # up to `slots` requests on this model, a core slot free, by priority
        self.lock = _compute_slots(n_threads).lock(self, slots)

    def run(
        self,
        request: dict[str, Any],
        on_chunk: Callable[[Any], bool] | None = None,
        cancel: threading.Event | None = None,
        timing: dict[str, float] | None = None,
        priority: int = 0,
    ) -> Any:
        """Run one chat completion; with ``on_chunk`` it streams (return True to stop).

        Generations of all models share the CPU through ``_compute_slots``: on 2 cores, two
        models each using 2 threads would run several times slower side by side than in turn,
        while requests to one model join its batch. Waiting requests go by ``priority`` (higher
        first), then in order of arrival. ``timing["compute_seconds"]`` is set to the request's
        share of the model's time (queueing excluded; while k answers are generated together,
        each request is charged 1/k per answer it draws).
        """
        share: Share | None = None
        try:
            with self.lock.turn(priority, answers=int(request.get("n") or 1)) as share:
                if cancel is not None and cancel.is_set():  # given up while queued
                    return None
                if on_chunk is None:
                    return self.server.handle_chat_completions(request)
                return self.server.handle_chat_completions(request, on_chunk)
        finally:  # the turn has ended: its share is final
            if timing is not None and share is not None:
                timing["compute_seconds"] = round(share.seconds, 3)


_engines: dict[tuple[str, int, int, int], _Engine] = {}
_engines_guard = threading.Lock()
_load_locks: dict[tuple[str, int, int, int], threading.Lock] = {}


def _get_engine(path: Path, n_ctx: int, n_threads: int, slots: int) -> _Engine:
    """The process-wide engine for this file and settings, loading it on first use."""
    key = (str(path), n_ctx, n_threads, slots)
    with _engines_guard:
        if key in _engines:
            return _engines[key]
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:  # different models load concurrently; the same one loads once
        with _engines_guard:
            if key in _engines:
                return _engines[key]
        engine = _Engine(path, n_ctx, n_threads, slots)
        with _engines_guard:
            _engines[key] = engine
        return engine


class _Generations:
    """The streaming generations running in worker threads, stopped before the interpreter exits.

    A worker thread spends its time in llama.cpp, which calls back into Python for each chunk.
    Left running at exit (a staircase round given up a moment before, a caller that stopped
    reading), such a thread is unwound by the interpreter's finalization through llama.cpp's C++
    frames, and the process aborts ("FATAL: exception not rethrown"). So at exit every running
    generation is asked to stop (llama.cpp stops at its next token) and waited for.
    """

    def __init__(self) -> None:
        self._running: dict[threading.Event, threading.Thread] = {}
        self._guard = threading.Lock()
        self._registered = False

    def started(self, thread: threading.Thread, cancel: threading.Event) -> None:
        with self._guard:
            self._running[cancel] = thread
            if not self._registered:
                atexit.register(self.stop_all)
                self._registered = True

    def finished(self, cancel: threading.Event) -> None:
        with self._guard:
            self._running.pop(cancel, None)

    def stop_all(self, timeout: float = 30.0) -> int:
        """Ask every running generation to stop and wait for them (at most ``timeout`` seconds
        in all); how many were running."""
        with self._guard:
            running = list(self._running.items())
        for cancel, _ in running:
            cancel.set()
        deadline = time.monotonic() + timeout
        for _, thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        return len(running)


_generations = _Generations()


def unload_local_models() -> int:
    """Forget every loaded model (memory is freed once no call is using it).

    Returns:
        How many loaded models were dropped.

    Example:
        >>> unload_local_models() >= 0
        True
    """
    with _engines_guard:
        count = len(_engines)
        _engines.clear()
    return count


def _label(model: str) -> str:
    if model.startswith(HUB_PREFIX):
        return model
    resolved = resolve_model(model)
    return resolved.name if isinstance(resolved, LocalModelSpec) else str(resolved)


def _text_of(message: BaseMessage) -> str:
    if isinstance(message.content, list):
        for block in message.content:
            if isinstance(block, dict) and block.get("type") in _NON_TEXT_BLOCKS:
                raise ValueError(
                    f"Local models accept text only; got a {block['type']!r} content block"
                )
    return message.text


def _to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """Map LangChain messages to the roles the GGUF chat templates know."""
    converted = []
    for message in messages:
        text = _text_of(message)
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
            calls = [f"Tool call: {c['name']}({json.dumps(c['args'])})" for c in message.tool_calls]
            text = "\n".join([text, *calls]) if text else "\n".join(calls)
        elif isinstance(message, ToolMessage | FunctionMessage):
            role = "user"
            label = message.name or getattr(message, "tool_call_id", "") or "tool"
            text = f"Tool result ({label}):\n{text}"
        elif isinstance(message, ChatMessage):
            role = message.role if message.role in {"system", "user", "assistant"} else "user"
        else:
            raise ValueError(f"Unsupported message type for a local model: {message.type!r}")
        converted.append({"role": role, "content": text})
    return converted


def _tokens(logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each token and its log-probability (llama.cpp also sends ids, bytes and the runner-up,
    which nothing here reads and which would multiply what caches and traces keep)."""
    return [{"token": entry.get("token"), "logprob": entry.get("logprob")}
            for entry in (logprobs or {}).get("content") or []]  # fmt: skip


def _usage(raw: dict[str, Any] | None) -> UsageMetadata | None:
    if not raw:
        return None
    usage = UsageMetadata(
        input_tokens=int(raw.get("prompt_tokens", 0)),
        output_tokens=int(raw.get("completion_tokens", 0)),
        total_tokens=int(raw.get("total_tokens", 0)),
    )
    cached = (raw.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        usage["input_token_details"] = {"cache_read": int(cached)}
    return usage


PRIORITY_KWARG = "priority"
"""Call keyword of a request's turn priority on the cores (higher goes first; default 0)."""


def _priority(kwargs: dict[str, Any]) -> int:
    return int(kwargs.get(PRIORITY_KWARG) or 0)


def _raise_if_error(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise LocalModelError(f"Unexpected reply from llama.cpp: {raw!r}")
    error = raw.get("error") or (raw if "code" in raw and "message" in raw else None)
    if error:
        raise LocalModelError(f"llama.cpp error: {error.get('message', error)}")


class ChatLocalModel(BaseChatModel):
    """A chat model running a small GGUF model in this process, on CPU.

    Models load lazily on the first call and are shared process-wide: every
    instance using the same file, ``n_ctx``, ``n_threads`` and ``slots`` uses one loaded
    copy, which generates for up to ``slots`` requests at once in one batch. Different models
    take turns on the cores.

    Example:
        >>> llm = ChatLocalModel(model="smollm2-135m", temperature=0.2, max_tokens=64)
        >>> for chunk in llm.stream("Write a haiku about CPUs"):  # doctest: +SKIP
        ...     print(chunk.content, end="")
    """

    moa_continuation: ClassVar[Continuation] = "prefill"
    """llama.cpp continues a final assistant message (staircase streaming needs it)."""
    moa_samples_in_one_request: ClassVar[bool] = True
    """Several answers of one prompt come from one request (``n``), the prompt read once."""

    @property
    def moa_max_samples_per_request(self) -> int:
        """One request draws at most ``slots`` answers: a model sampled more often is asked in
        several requests."""
        return self.slots

    moa_cheap_logprobs: ClassVar[bool] = True
    """Token log-probabilities come with the answer at no real cost (a ``vote`` records them)."""
    moa_takes_turns: ClassVar[bool] = True
    """Generations share this machine's cores and take turns: a staircase writes with it one
    chunk a call, so that the other writers get their turn between chunks."""

    def moa_traits(self) -> BackendTraits:
        """Its traits for the engine (the ``moa_graph.backend.LocalBackend`` protocol): the
        ``moa_*`` attributes above, as one record."""
        return BackendTraits(
            continuation=self.moa_continuation,
            samples_in_one_request=self.moa_samples_in_one_request,
            max_samples_per_request=self.moa_max_samples_per_request,
            cheap_logprobs=self.moa_cheap_logprobs,
            takes_turns=self.moa_takes_turns,
        )

    model: str
    """Registered name (see ``moa_graph.local.weights.MODELS``) or path to a ``.gguf`` file."""
    temperature: float = Field(default=0.7, ge=0.0)
    max_tokens: int = Field(default=512, ge=1)
    n_ctx: int = Field(default=4096, ge=64)
    """Context window (prompt plus answer) in tokens."""
    n_threads: int = Field(default_factory=_default_threads, ge=1)
    slots: int = Field(default=8, ge=1)
    """Requests, or samples of one request (``n``), generated together in one batch; the
    ``n_ctx`` tokens of context are shared among them."""
    seed: int | None = None
    stop: list[str] | None = None
    logprobs: bool = False
    """Return each token's log-probability in ``response_metadata["logprobs"]["content"]``
    (OpenAI's layout)."""
    cache_prompt: bool = True
    """Start from the longest beginning of the prompt the engine still holds from an earlier
    request (llama.cpp's ``cache_prompt``). ``False`` reads every prompt whole: slower, for
    measuring (a benchmark's variants would otherwise find the prompt the one before read)."""
    n: int = Field(default=1, ge=1)
    """Answers drawn in one request (``generate`` returns them all; ``invoke`` the first).
    With a seed, answer k is drawn as a single request with ``seed + k`` would draw it."""

    @field_validator("model", mode="before")
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check_model(self) -> Self:
        # at construction, naming the command that fixes it, not at the first call
        require("local", f"the embedded model {self.model!r}")
        resolved = resolve_model(self.model)  # ValueError naming the problem
        if isinstance(resolved, LocalModelSpec):
            check_installed(resolved)
        return self

    @property
    def _llm_type(self) -> str:
        return "local-llamacpp"

    @property
    def model_label(self) -> str:
        """Canonical registry name, or the file path for a user's own GGUF file."""
        return _label(self.model)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_label,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "seed": self.seed,
            "stop": self.stop,
            # only when set, so that the keys of calls cached before they counted stay the same:
            # an LLM cache must not answer a request for n answers, or for log-probabilities,
            # with a stored call that had neither
            **({"n": self.n} if self.n != 1 else {}),
            **({"logprobs": True} if self.logprobs else {}),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "local"
        model = self._model_for(kwargs)
        try:
            params["ls_model_name"] = _label(model)
        except ValueError:  # tracing reports the name; the call itself will raise
            params["ls_model_name"] = model
        return params

    def preload(self) -> Self:
        """Load the model now rather than on the first call.

        Example:
            >>> ChatLocalModel(model="smollm2-135m").preload()  # doctest: +SKIP
        """
        self._engine()
        return self

    def _model_for(self, kwargs: dict[str, Any]) -> str:
        """The call-time ``model`` override (e.g. from ``bind(model=...)``), else ``model``."""
        override = kwargs.get("model")
        return os.fspath(override) if override else self.model

    def _engine(self, model: str | None = None) -> _Engine:
        resolved = resolve_model(model or self.model)
        path = (
            ensure_model_file(resolved.name) if isinstance(resolved, LocalModelSpec) else resolved
        )
        return _get_engine(path, self.n_ctx, self.n_threads, self.slots)

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        stream: bool,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "messages": _to_openai_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            request["seed"] = self.seed
        if not self.cache_prompt:
            request["cache_prompt"] = False
        request.update({k: v for k, v in kwargs.items() if k in _REQUEST_KWARGS and v is not None})
        stops = stop if stop is not None else self.stop
        if stops:
            request["stop"] = list(stops)
        if kwargs.get("logprobs", self.logprobs):
            request["logprobs"], request["top_logprobs"] = True, 1  # the least llama.cpp sends
        if (n := self._n(kwargs)) > 1:
            request["n"] = n
        if stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        return request

    def _metadata(
        self, model: str, finish_reason: str | None, timing: dict[str, float]
    ) -> dict[str, Any]:
        return {"model_name": _label(model), "finish_reason": finish_reason, **timing}

    def _n(self, kwargs: dict[str, Any]) -> int:
        """Answers this call asks for (the ``n`` call argument, else the field)."""
        return int(kwargs.get("n") or self.n)

    def _streaming_disabled(self, **kwargs: Any) -> bool:
        # several answers of one request are drawn whole (``stream`` then gives the first)
        return self._n(kwargs) > 1 or super()._streaming_disabled(**kwargs)

    def _samples(self, kwargs: dict[str, Any]) -> int:
        """``_n``, checked against the slots that must draw the answers together."""
        n = self._n(kwargs)
        slots = self.slots
        if n > slots:
            raise ValueError(f"n={n} answers in one request need as many slots: this model has "
                             f"slots={slots} (raise slots, or ask for fewer)")  # fmt: skip
        return n

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self._samples(kwargs) > 1:
            items: queue.SimpleQueue[Any] = queue.SimpleQueue()
            answers = self._draw(messages, stop, kwargs, items.put)
            try:
                while (raw := items.get()) is not _DONE:
                    answers.take(raw)
            finally:
                answers.cancel.set()
            return answers.result()
        model = self._model_for(kwargs)
        timing: dict[str, float] = {}
        request = self._request(messages, stop, kwargs, stream=False)
        raw = self._engine(model).run(request, timing=timing, priority=_priority(kwargs))
        _raise_if_error(raw)
        choice = raw["choices"][0]
        finish_reason = choice.get("finish_reason")
        metadata = self._metadata(model, finish_reason, timing)
        if choice.get("logprobs"):
            metadata["logprobs"] = {"content": _tokens(choice["logprobs"])}
        message = AIMessage(
            content=choice["message"].get("content") or "",
            usage_metadata=_usage(raw.get("usage")),
            response_metadata=metadata,
        )
        return ChatResult(
            generations=[
                ChatGeneration(message=message, generation_info={"finish_reason": finish_reason})
            ],
            llm_output={"model_name": _label(model), "token_usage": raw.get("usage")},
        )

    def _start_stream(
        self,
        model: str,
        request: dict[str, Any],
        emit: Callable[[Any], None],
        cancel: threading.Event,
        timing: dict[str, float],
        priority: int,
    ) -> None:
        """Generate in a worker thread, passing raw chunks, then ``_DONE`` or an error, to emit
        (``timing`` is filled before ``_DONE``)."""

        def on_chunk(raw: Any) -> bool:
            emit(raw)
            return cancel.is_set()  # True asks llama.cpp to stop generating

        def work() -> None:
            try:
                self._engine(model).run(request, on_chunk, cancel, timing, priority)
            except BaseException as exc:
                emit(exc)
            else:
                emit(_DONE)
            finally:
                _generations.finished(cancel)

        thread = threading.Thread(target=work, name="moa-graph-local", daemon=True)
        _generations.started(thread, cancel)
        thread.start()

    def _chunks(self, raw: Any, state: dict[str, Any]) -> Iterator[ChatGenerationChunk]:
        """Turn one raw llama.cpp chunk (or error) into text chunks; remember finish/usage."""
        if isinstance(raw, BaseException):
            raise raw
        _raise_if_error(raw)
        if raw.get("usage"):
            state["usage"] = raw["usage"]
        for choice in raw.get("choices") or []:
            state["finish_reason"] = choice.get("finish_reason") or state.get("finish_reason")
            text = (choice.get("delta") or {}).get("content")
            tokens = _tokens(choice.get("logprobs"))
            if text or tokens:
                metadata = {"logprobs": {"content": tokens}} if tokens else {}
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content=text or "", response_metadata=metadata)
                )

    def _draw(self, messages: list[BaseMessage], stop: list[str] | None,
              kwargs: dict[str, Any], emit: Callable[[Any], None]) -> _Answers:  # fmt: skip
        """Start drawing ``n`` answers in one streamed request; its chunks go to ``emit``."""
        model = self._model_for(kwargs)
        request = self._request(messages, stop, kwargs, stream=True)
        answers = _Answers(self, model, request["n"])
        self._start_stream(model, request, emit, answers.cancel, answers.timing,
                           _priority(kwargs))  # fmt: skip
        return answers

    def _last_chunk(self, model: str, state: dict[str, Any]) -> ChatGenerationChunk:
        finish_reason = state.get("finish_reason")
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(state.get("usage")),
                response_metadata=self._metadata(model, finish_reason, state["timing"]),
                chunk_position="last",
            ),
            generation_info={"finish_reason": finish_reason},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        cancel = threading.Event()
        model = self._model_for(kwargs)
        request = self._request(messages, stop, kwargs, stream=True)
        state: dict[str, Any] = {"timing": {}}
        self._start_stream(model, request, items.put, cancel, state["timing"], _priority(kwargs))
        try:
            while (raw := items.get()) is not _DONE:
                for chunk in self._chunks(raw, state):
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            yield self._last_chunk(model, state)
        finally:
            cancel.set()  # stops generation early if the consumer went away

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # event loop already closed
                loop.call_soon_threadsafe(items.put_nowait, item)

        model = self._model_for(kwargs)
        request = self._request(messages, stop, kwargs, stream=True)
        state: dict[str, Any] = {"timing": {}}
        self._start_stream(model, request, emit, cancel, state["timing"], _priority(kwargs))
        try:
            while (raw := await items.get()) is not _DONE:
                for chunk in self._chunks(raw, state):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            yield self._last_chunk(model, state)
        finally:
            cancel.set()  # also on task cancellation

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Streaming internally keeps the event loop free and lets cancellation stop generation.
        if self._samples(kwargs) == 1:
            return await agenerate_from_stream(self._astream(messages, stop, None, **kwargs))
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # event loop already closed
                loop.call_soon_threadsafe(items.put_nowait, item)

        answers = self._draw(messages, stop, kwargs, emit)
        try:
            while (raw := await items.get()) is not _DONE:
                answers.take(raw)
        finally:
            answers.cancel.set()  # also on task cancellation
        return answers.result()


class _Answers:
    """The ``n`` answers of one streamed request, sorted out of its chunks.

    llama.cpp's non-streamed reply to ``n`` > 1 counts the usage of one answer only; its stream
    follows each answer's last chunk with that answer's own usage.
    """

    def __init__(self, chat_model: ChatLocalModel, model: str, n: int) -> None:
        self.chat_model, self.model = chat_model, model
        self.texts: list[str] = [""] * n
        self.tokens: list[list[Any]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.usage: list[dict[str, Any] | None] = [None] * n
        self.ended: list[int] = []  # answers in the order they ended
        self.timing: dict[str, float] = {}
        self.cancel = threading.Event()

    def take(self, raw: Any) -> None:
        """Sort one raw chunk (or raise the error the request ended with)."""
        if isinstance(raw, BaseException):
            raise raw
        _raise_if_error(raw)
        if raw.get("usage") and self.ended:
            self.usage[self.ended[-1]] = raw["usage"]
        for choice in raw.get("choices") or []:
            index = choice.get("index", 0)
            self.texts[index] += (choice.get("delta") or {}).get("content") or ""
            self.tokens[index] += _tokens(choice.get("logprobs"))
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]
                self.ended.append(index)

    def result(self) -> ChatResult:
        """The answers as generations, each charged an equal part of the request's time."""
        n = len(self.texts)
        timing = ({"compute_seconds": round(self.timing["compute_seconds"] / n, 3)}
                  if "compute_seconds" in self.timing else {})  # fmt: skip
        generations = []
        for k, (text, tokens, finish, usage) in enumerate(
            zip(self.texts, self.tokens, self.finish, self.usage, strict=True)
        ):
            if k and usage:  # the prompt was read once, for the first answer
                usage = {**usage, "prompt_tokens": 0, "prompt_tokens_details": {},
                         "total_tokens": usage.get("completion_tokens", 0)}  # fmt: skip
            metadata = self.chat_model._metadata(self.model, finish, timing)
            if tokens:
                metadata["logprobs"] = {"content": tokens}
            message = AIMessage(content=text, usage_metadata=_usage(usage),
                                response_metadata=metadata)  # fmt: skip
            info = {"finish_reason": finish}
            generations.append(ChatGeneration(message=message, generation_info=info))
        return ChatResult(generations=generations, llm_output={"model_name": _label(self.model)})


def create_local_chat_model(spec: str, **kwargs: Any) -> ChatLocalModel:
    """Build a :class:`ChatLocalModel` from the part of a model spec after ``local:``.

    Args:
        spec: A registered name (``"smollm2-135m"``) or a path to a ``.gguf`` file;
            a leading ``"local:"`` is accepted too.
        **kwargs: Other :class:`ChatLocalModel` fields (``temperature``, ``max_tokens``...).

    Returns:
        The (not yet loaded) chat model.

    Raises:
        ValueError: Unknown name and no such GGUF file.
        ModelNotInstalledError: A registered model whose packages are not installed (the
            message ends with the ``pip install`` command).

    Example:
        >>> create_local_chat_model("SmolLM2", temperature=0.3).model_label
        'smollm2-135m'
    """
    return ChatLocalModel(model=spec.removeprefix("local:"), **kwargs)
