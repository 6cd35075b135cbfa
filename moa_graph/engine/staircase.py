"""Staircase streaming (Wang et al., arXiv 2510.05059): readers start on the first chunk.

With ``staircase=N`` every proposer streams, and every model that reads references (each proposer
of layer 2 and later, and the aggregator) writes its answer in *rounds*. Round r starts once every
reference has written its r-th chunk (N tokens, counted with the mixture's ``token_counter``) or
has ended. The reader is shown each reference up to that chunk, with a mark where more follows
(``MORE_MARK``) or where it stopped early (``STOPPED_MARK``), and writes up to N tokens more of
its own answer, continuing it as a final assistant message. Once every reference is shown whole,
it writes to the end. With three layers the staircase cascades.

Rounds stay in step: round r shows r chunks of each reference even when more has arrived. So a
run does not depend on timing: a seed reproduces it, cached calls answer it again, and a resumed
run asks the same questions. A reference that fails or is cut off after some chunks keeps what it
wrote (marked as stopped; its proposal is ``failed`` or ``cancelled`` with that ``text``); one
that ends without a word is left out from the first round on, so numbering never changes.

The graph runs a staircase in its ``aggregate`` step: each proposer is a LangGraph task (so a
resumed run pays no finished proposer again), the aggregator writes in the step itself, and all
of them talk through a ``Board``, the texts being written in one run. Each writer is one body
run by the call runner (``moa_graph.engine.runner``), waiting on the board between rounds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from langchain_core.messages import AIMessage, BaseMessage, UsageMetadata

from moa_graph.engine.references import TokenCounter
from moa_graph.prompts import inject_references, with_system_prompt

MORE_MARK = " [...continues]"
"""Ends a reference shown in part while its model goes on writing."""
STOPPED_MARK = " [...stopped early]"
"""Ends a reference whose model failed or was cut off after some chunks."""

VLLM_CONTINUATION = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM's request fields that continue a final assistant message."""

Key = tuple[int, int]
"""A writer's ``(layer, index)``; the aggregator's layer is the plan's ``layers``."""
Status = Literal["writing", "answered", "failed", "cancelled"]


@dataclass
class Entry:
    """What one writer has written so far, and whether (and how) it ended."""

    text: str = ""
    status: Status = "writing"

    @property
    def ended(self) -> bool:
        return self.status != "writing"


class Board:
    """The texts being written in one staircase run, shared by its writers and readers.

    Writers append text and end; readers wait until their references are ready, each the way
    its driver waits (``moa_graph.engine.runner``): a thread on an event (``wait``), a task on
    its loop (``await_ready``). A change wakes every waiter to check again.

    Example:
        >>> board = Board()
        >>> board.write((1, 0), "Paris is")
        >>> board.end((1, 0), "answered")
        >>> board.entry((1, 0))
        Entry(text='Paris is', status='answered')
    """

    def __init__(self) -> None:
        self._entries: dict[Key, Entry] = {}
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], object]] = []
        self.aborted: str | None = None
        """Why the run stopped (every writer stops at its next token)."""

    def entry(self, key: Key) -> Entry:
        with self._lock:
            entry = self._entries.setdefault(key, Entry())
            return Entry(entry.text, entry.status)

    def write(self, key: Key, text: str) -> None:
        if text:
            self._update(key, lambda entry: setattr(entry, "text", entry.text + text))

    def end(self, key: Key, status: Status) -> None:
        self._update(key, lambda entry: setattr(entry, "status", status))

    def poke(self) -> None:
        """Wake every waiter to check again (something outside the board changed)."""
        self._update(None, lambda entry: None)

    def abort(self, reason: str) -> None:
        """Stop every writer of the run (the aggregator failed, or a layer fell short)."""
        self.aborted = reason
        self.poke()

    def _update(self, key: Key | None, change: Callable[[Entry], object]) -> None:
        with self._lock:
            if key is not None:
                change(self._entries.setdefault(key, Entry()))
            waiters, self._waiters = self._waiters, []
        for notify in waiters:
            notify()

    def _on_change(self, notify: Callable[[], object]) -> None:
        """Call ``notify`` (once) at the next change."""
        with self._lock:
            self._waiters.append(notify)

    def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``ready()`` (checked after every change); ``False`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        while True:
            changed.clear()
            self._on_change(changed.set)  # before checking: a change meanwhile is not missed
            if ready():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            changed.wait(remaining)

    async def await_ready(self, ready: Callable[[], bool]) -> None:
        """Wait on the running loop until ``ready()`` (checked after every change; a change
        may come from another thread: a layer's deadline)."""
        loop = asyncio.get_running_loop()
        while True:
            changed = loop.create_future()
            self._on_change(partial(loop.call_soon_threadsafe, _resolve, changed))
            if ready():
                return
            await changed


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def cut_to_tokens(text: str, tokens: int, count: TokenCounter) -> str:
    """The longest prefix of ``text`` that ends at a word boundary and counts at most
    ``tokens`` (the whole text when it fits).

    Example:
        >>> cut_to_tokens("one two three four", 3, lambda t: len(t.split()))
        'one two three'
    """
    if count(text) <= tokens:
        return text
    bounds = [
        i for i, char in enumerate(text) if char.isspace() and i and not text[i - 1].isspace()
    ]
    low, high, best = 0, len(bounds) - 1, ""
    while low <= high:
        middle = (low + high) // 2
        candidate = text[: bounds[middle]]
        if count(candidate) <= tokens:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


@dataclass(frozen=True)
class Schedule:
    """The chunk sizes of a staircase: ``first`` tokens, each next chunk ``growth`` times the
    one before (``growth`` 1: every chunk the same).

    Example:
        >>> schedule = Schedule(16, 2.0)
        >>> [schedule.size(r) for r in (1, 2, 3)], schedule.shown(3)
        ([16, 32, 64], 112)
    """

    first: int
    growth: float = 1.0

    def size(self, round_number: int) -> int:
        """Tokens of chunk ``round_number`` (from 1)."""
        return max(1, round(self.first * self.growth ** (round_number - 1)))

    def shown(self, round_number: int) -> int:
        """Tokens of chunks 1 to ``round_number``, what round ``round_number`` shows."""
        return sum(self.size(r) for r in range(1, round_number + 1))


@dataclass
class Round:
    """One model call of a writer: its number, the references it was shown and its limit."""

    number: int
    references: list[str]
    max_tokens: int | None
    """Tokens this call may write (``None``: the model's own limit)."""
    final: bool
    """Every reference is shown whole: the writer goes on to the end."""


@dataclass
class Writer:
    """One model writing its answer in rounds: a proposer, or the aggregator.

    ``sources`` are the keys of the references it reads, in configured order (none for a
    proposer of layer 1, which writes in one call). ``next_round()`` says what the next call is
    once ``ready()``; ``finish_round(message)`` takes its answer.
    """

    key: Key
    board: Board
    schedule: Schedule
    count: TokenCounter
    sources: list[Key]
    budget: int | None
    """The writer's whole answer limit in tokens, where known."""
    in_chunks: bool = False
    """Write one chunk a call even with nothing (more) to read: its model takes turns with
    the other writers on the machine's cores."""
    text: str = ""
    tokens: int = 0
    rounds: int = 0
    usage: list[UsageMetadata] = field(default_factory=list)
    done: bool = False
    shown: list[Key] | None = None
    """The references in its prompt, fixed at the first round (numbering never changes)."""
    last_id: str | None = None
    """The id of its last round's message (the whole answer takes it: already streamed)."""

    def ready(self) -> bool:
        """Whether every source has its next chunk, or has ended."""
        if self.board.aborted is not None:
            return True
        wanted = self.schedule.shown(self.rounds + 1)
        return all(
            entry.ended or self.count(entry.text) >= wanted
            for entry in map(self.board.entry, self.sources)
        )

    def next_round(self) -> Round:
        """The next call: the references in step with it, and how much it may write."""
        number = self.rounds + 1
        shown_tokens, chunk = self.schedule.shown(number), self.schedule.size(number)
        entries = {key: self.board.entry(key) for key in self.sources}
        if self.shown is None:  # a reference that ended without a word is left out for good
            self.shown = [key for key in self.sources if entries[key].text.strip()]
        references, whole = [], True
        for key in self.shown:
            entry = entries[key]
            part = cut_to_tokens(entry.text, shown_tokens, self.count)
            if len(part) < len(entry.text.rstrip()) or not entry.ended:
                references.append(part.strip() + MORE_MARK)
                whole = False
            elif entry.status != "answered":
                references.append(part.strip() + STOPPED_MARK)
            else:
                references.append(part.strip())
        remaining = None if self.budget is None else max(self.budget - self.tokens, 1)
        if whole and not self.in_chunks:
            limit = remaining
        else:
            limit = chunk if remaining is None else min(chunk, remaining)
        return Round(number, references, limit, whole)

    def finish_round(self, round_: Round, message: BaseMessage) -> None:
        """Take a round's answer; the writer is done when the model stopped on its own, its
        budget is spent, or it wrote its last round."""
        self.rounds = round_.number
        self.last_id = message.id
        written = message.text
        self.text += written
        usage = getattr(message, "usage_metadata", None)
        if usage:
            self.usage.append(usage)
        tokens = usage["output_tokens"] if usage else self.count(written)
        self.tokens += tokens
        finish = message.response_metadata.get("finish_reason")
        limit = round_.max_tokens
        ended = finish == "stop" or (finish is None and limit is not None and tokens < limit)
        spent = self.budget is not None and self.tokens >= self.budget
        self.done = (round_.final and not self.in_chunks) or spent or ended or not written


def round_messages(
    conversation: Sequence[BaseMessage],
    round_: Round,
    written: str,
    *,
    prompt: str,
    system_prompt: str | None,
) -> list[BaseMessage]:
    """A round's prompt: the conversation with the references, then the answer so far.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> messages = round_messages([HumanMessage("Fruit?")], Round(2, ["Apple" + MORE_MARK],
        ...                           16, False), "An apple", prompt="Responses:",
        ...                           system_prompt=None)
        >>> [m.type for m in messages], messages[0].content, messages[-1].content
        (['system', 'human', 'ai'], 'Responses:\\n1. Apple [...continues]', 'An apple')
    """
    messages = with_system_prompt(conversation, system_prompt)
    if round_.references:  # a writer without references (layer 1, or left alone) gets none
        messages = inject_references(messages, round_.references, prompt)
    return [*messages, AIMessage(written)] if written else messages
