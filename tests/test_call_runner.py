"""The one call runner: a step written once runs under ``invoke`` and ``ainvoke`` alike, with the
mixture's rules (retries, streaming cut-offs, waits on a staircase board)."""

from __future__ import annotations

import ast
import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from moa_graph import ChatMixtureOfAgents
from moa_graph.engine import scope as scope_module
from moa_graph.engine.calls import CallCancelled, CallPolicy
from moa_graph.engine.limits import CallLimiter
from moa_graph.engine.runner import ModelCall, Steps, WaitFor, drive_async, drive_sync
from moa_graph.engine.staircase import Board
from tests.fakes import ScriptedChatModel

ENGINE = Path(__file__).parent.parent / "moa_graph" / "engine"
FORBIDDEN = {"Condition", "WeakValueDictionary"}


def run_both(make_steps: Callable[[], Steps[Any]]) -> tuple[Any, Any]:
    """The outcome of the same step under the blocking and the asyncio driver."""
    limiter = CallLimiter(None)
    return drive_sync(make_steps(), limiter), asyncio.run(drive_async(make_steps(), limiter))


class FlakyModel(ScriptedChatModel):
    """Fails with a transient error on its first ``failures`` calls, then answers."""

    failures: int = 1

    def _answer(self, messages: Any, kwargs: dict[str, Any]) -> str:
        if len(self.calls) < self.failures:
            self.calls.append(list(messages))
            raise ConnectionError("connection reset")
        return super()._answer(messages, kwargs)


def test_one_body_gives_the_same_outcome_under_both_drivers() -> None:
    def steps() -> Steps[list[str]]:
        first = yield ModelCall(ScriptedChatModel(reply="four"), "2 + 2?", {}, CallPolicy())
        second = yield ModelCall(ScriptedChatModel(reply="eight"), "4 + 4?", {}, CallPolicy())
        return [first.text, second.text]

    assert run_both(steps) == (["four", "eight"], ["four", "eight"])


def test_a_failed_call_is_raised_where_the_step_yielded_it() -> None:
    def steps() -> Steps[str]:
        broken = ScriptedChatModel(error=ValueError("bad request"))
        try:
            yield ModelCall(broken, "hi", {}, CallPolicy(max_retries=0))
        except ValueError as error:
            return f"caught: {error}"
        return "not raised"

    assert run_both(steps) == ("caught: bad request", "caught: bad request")


def test_transient_failures_are_retried_and_every_attempt_counted() -> None:
    calls: list[ModelCall] = []
    retried: list[int] = []

    def steps() -> Steps[str]:
        policy = CallPolicy(max_retries=3, backoff_base=0.001, backoff_max=0.001)
        call = ModelCall(FlakyModel(reply="fine", failures=2), "hi", {}, policy,
                         on_retry=lambda attempt, *_: retried.append(attempt))  # fmt: skip
        calls.append(call)
        answer = yield call
        return answer.text

    assert run_both(steps) == ("fine", "fine")
    assert [call.attempts for call in calls] == [3, 3]
    assert retried == [1, 2, 1, 2]


def test_a_streamed_call_hands_its_text_on_and_stops_when_told() -> None:
    def reading(pieces: list[str]) -> Steps[str]:
        def stop_after_two() -> str | None:
            return "the run stopped" if len(pieces) >= 2 else None

        model = ScriptedChatModel(reply="one two three four five")
        try:
            yield ModelCall(model, "count", {}, CallPolicy(max_retries=0), streamed=True,
                            on_text=pieces.append, stopped=stop_after_two)  # fmt: skip
        except CallCancelled as cancelled:
            return cancelled.reason
        return "read to the end"

    limiter = CallLimiter(None)
    pieces_sync: list[str] = []
    assert drive_sync(reading(pieces_sync), limiter) == "the run stopped"
    pieces_async: list[str] = []
    assert asyncio.run(drive_async(reading(pieces_async), limiter)) == "the run stopped"
    assert len(pieces_sync) == len(pieces_async) == 2


def test_a_step_waits_on_the_board_until_it_is_ready_under_both_drivers() -> None:
    def steps(board: Board) -> Steps[str]:
        yield WaitFor(board, lambda: board.entry((1, 0)).status == "answered")
        return board.entry((1, 0)).text

    board = Board()
    writer = threading.Timer(0.05, lambda: (board.write((1, 0), "Paris"),
                                            board.end((1, 0), "answered")))  # fmt: skip
    writer.start()
    assert drive_sync(steps(board), CallLimiter(None)) == "Paris"

    async def main() -> str:
        board = Board()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, board.write, (1, 0), "Rome")
        loop.call_later(0.06, board.end, (1, 0), "answered")
        return await drive_async(steps(board), CallLimiter(None))

    assert asyncio.run(main()) == "Rome"


def test_the_engine_has_no_thread_condition_and_no_module_global_run_registry() -> None:
    """The staircase's writers wait through the runner's drivers (an event for a thread, a
    future for a task), not on a ``threading.Condition`` shared with asyncio; a proposer task
    reaches its run as a method of it, not through a module-global table of runs."""
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN:
                pytest.fail(f"{path.name}:{node.lineno} uses {node.attr}")
        for statement in tree.body:  # module-level mutable tables of runs
            if isinstance(statement, ast.AnnAssign | ast.Assign):
                value = statement.value
                if isinstance(value, ast.Call) and getattr(value.func, "attr", None) in {
                    "WeakValueDictionary", "WeakKeyDictionary"
                }:  # fmt: skip
                    pytest.fail(f"{path.name}:{statement.lineno} keeps a module-global registry")


def test_a_runs_plan_is_worked_out_once_for_its_check_its_run_and_its_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worked_out: list[Any] = []
    original = scope_module.run_plan

    def counting(plan: Any, context: Any) -> Any:
        worked_out.append(dict(context))
        return original(plan, context)

    for module in list(sys.modules.values()):  # wherever it was imported to
        if getattr(module, "__name__", "").startswith("moa_graph") and (
            getattr(module, "run_plan", None) is original
        ):
            monkeypatch.setattr(module, "run_plan", counting)
    proposers = [ScriptedChatModel(reply=name.upper(), model_name=name) for name in "ab"]
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=ScriptedChatModel(reply="final"),
                              layers=3)  # fmt: skip
    config = {"configurable": {"moa": {"layers": 2, "aggregator": "b"}}}
    answer = moa.invoke("Hi", config)
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["aggregator_model"] == "b"
    assert len(worked_out) == 1
    moa.invoke("Again", config)  # the same choice again: nothing worked out anew
    assert len(worked_out) == 1
