"""Durable runs: a run interrupted mid-layer resumes on its thread and re-uses finished proposals.

The server counts every call it receives, so each test proves that no finished proposer is
called twice. A SQLite thread survives its process being killed (the run is started in a child
process, killed with SIGKILL while one proposer hangs, and resumed here); an in-memory thread
survives the run being cancelled mid-layer.

LangGraph saves a task's writes (here: one proposer's proposal) as soon as the task finishes,
in the background, under its default durability (``"async"``) as under ``"sync"``; ``"sync"``
only also waits for each step's checkpoint. Under ``"exit"`` nothing is saved before the run
ends, so a killed run leaves nothing to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import EmptyInputError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability
from pydantic import SecretStr

from moa_graph import ProposalsFailedError, ProposerSpec, create_moa_graph
from moa_graph.checkpoints import async_checkpointer, checkpointer
from moa_graph.testing import ModelScript, OpenAICompatibleServer, ServerProcess
from moa_graph.testing.records import RequestLogQueries, RequestRecord
from tests.support import durable_child
from tests.support.durable_child import QUESTION, ChildSettings, build_graph, thread_config

ROOT = Path(__file__).resolve().parents[1]
CHILD_SCRIPT = Path(durable_child.__file__)
AGGREGATOR, FINAL, LATE = "agg", "The final answer.", "A late answer."
WAIT_S = 20.0
T = TypeVar("T")


@dataclass(frozen=True)
class Shape:
    """A mixture's proposers (model names per layer) and the one that hangs."""

    proposers: list[list[str]]
    hanging: str

    @property
    def hanging_layer(self) -> int:
        return next(n for n, layer in enumerate(self.proposers, 1) if self.hanging in layer)

    @property
    def finished_in_hanging_layer(self) -> set[str]:
        return set(self.proposers[self.hanging_layer - 1]) - {self.hanging}

    @property
    def models(self) -> list[str]:
        return [model for layer in self.proposers for model in layer]


LITE = Shape([["p1", "p2", "p3"]], hanging="p3")  # MoA-Lite: killed in its only proposer layer
DEEP = Shape([["p1", "p2", "p3"], ["q1", "q2", "q3"]], hanging="q3")  # killed in layer 2


def reply_of(model: str) -> str:
    return f"Answer of {model}."


def scripts_for(shape: Shape) -> dict[str, ModelScript]:
    """Every proposer answers at once, except the hanging one; so does the aggregator."""
    scripts = {model: ModelScript(reply=reply_of(model)) for model in shape.models}
    scripts[shape.hanging] = ModelScript(reply=reply_of(shape.hanging), faults=["hang"])
    scripts[AGGREGATOR] = ModelScript(reply=FINAL)
    return scripts


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def hanging_call_in_flight(server: RequestLogQueries, shape: Shape) -> bool:
    """Whether the server answered the hanging layer's other proposers and holds the hung call."""
    records = server.requests()
    answered = {r.model for r in records if r.outcome == "stop"}
    hung = any(r.model == shape.hanging and r.outcome == "hang" for r in records)
    return hung and shape.finished_in_hanging_layer <= answered


def saved_proposals(saver: BaseCheckpointSaver[Any], config: RunnableConfig) -> list[str]:
    """Proposers whose answers are saved as pending writes of the thread's latest checkpoint."""
    saved = saver.get_tuple(config)
    names: list[str] = []
    for _task, channel, value in (saved.pending_writes or []) if saved else []:
        if channel == "proposals" and isinstance(value, list):
            names += [p["model"] for p in value if p["status"] == "answered"]
        elif channel == "__return__" and isinstance(value, dict) and "proposer" in value:
            names += [value["model"]] if value["status"] == "answered" else []  # a staircase task
    return sorted(names)


def stored_proposals(url: str, config: RunnableConfig) -> list[str]:
    """``saved_proposals`` of the thread kept at the checkpoint ``url``."""
    with checkpointer(url) as saver:
        return saved_proposals(saver, config)


def call_counts(records: list[RequestRecord]) -> dict[str, int]:
    return dict(Counter(record.model for record in records))


def expected_counts(shape: Shape) -> dict[str, int]:
    """Every proposer once, the hanging one twice (hung, then resumed), the aggregator once."""
    return {**dict.fromkeys(shape.models, 1), shape.hanging: 2, AGGREGATOR: 1}


def check_resumed_run(
    shape: Shape, result: dict[str, Any], before: list[RequestRecord], after: list[RequestRecord]
) -> None:
    """The resumed run called only the unfinished proposer and the aggregator, and answered."""
    assert result["messages"][-1].text == FINAL
    texts = {
        p["model"]: p["text"] for p in result["proposals"] if p["layer"] == shape.hanging_layer
    }
    assert texts == {
        **{m: reply_of(m) for m in shape.finished_in_hanging_layer},
        shape.hanging: LATE,
    }
    assert all(p["status"] == "answered" for p in result["proposals"])
    assert len(result["proposals"]) == len(shape.models)
    resumed = after[len(before) :]
    assert [r.model for r in resumed] == [shape.hanging, AGGREGATOR]
    assert call_counts(after) == expected_counts(shape)
    if shape.hanging_layer > 1:  # the resumed call still sees the earlier layer's answers
        system = resumed[0].messages[0]["content"]
        assert all(reply_of(m) in system for m in shape.proposers[shape.hanging_layer - 2])


# -- a killed process, a SQLite thread ----------------------------------------------------------


@dataclass
class Child:
    """A ``durable_child.py`` process and the file holding its output."""

    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the child, which must still be running (stuck on the hung call)."""
        assert self.process.poll() is None, f"the child ended early:\n{self.log.read_text()}"
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL


StartChild = Callable[[ChildSettings], Child]


@pytest.fixture
def start_child(tmp_path: Path) -> Iterator[StartChild]:
    """Start ``durable_child.py`` runs (output in ``tmp_path``); kill any left at the end."""
    children: list[Child] = []
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    def start(settings: ChildSettings) -> Child:
        log = tmp_path / f"child-{len(children)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(CHILD_SCRIPT), json.dumps(settings)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        children.append(Child(process, log))
        return children[-1]

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(10)


def settings_for(
    shape: Shape, server: ServerProcess, url: str, durability: Durability | None
) -> ChildSettings:
    return ChildSettings(
        checkpoint=url,
        base_url=server.base_url,
        api_key="sk-test-placeholder",
        proposers=shape.proposers,
        aggregator=AGGREGATOR,
        thread=f"t-{uuid.uuid4().hex}",  # a database may be shared by several tests
        durability=durability,
    )


def resume_from(settings: ChildSettings, mode: str) -> dict[str, Any]:
    """Resume the thread in this process: ``invoke(None)`` or ``ainvoke(None)``."""
    config = thread_config(settings)
    if mode == "invoke":
        with checkpointer(settings["checkpoint"]) as saver:
            return build_graph(settings, saver).invoke(None, config)

    async def resume() -> dict[str, Any]:
        async with async_checkpointer(settings["checkpoint"]) as saver:
            return await build_graph(settings, saver).ainvoke(None, config)

    return asyncio.run(resume())


@pytest.fixture(params=["sqlite", "postgres"])
def checkpoint_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A place to keep threads: a SQLite file, or the test session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'checkpoints.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize(
    ("shape", "mode"),
    [(LITE, "ainvoke"), (DEEP, "invoke")],
    ids=["moa-lite-killed-in-layer-1-ainvoke", "moa-killed-in-layer-2-invoke"],
)
def test_killed_run_resumes_without_calling_finished_proposers_again(
    checkpoint_url: str,
    start_child: StartChild,
    shape: Shape,
    mode: str,
) -> None:
    """Under LangGraph's default durability (no ``durability="sync"`` needed); the thread in a
    SQLite file, or in PostgreSQL."""
    with ServerProcess(scripts_for(shape)) as server:
        settings = settings_for(shape, server, checkpoint_url, durability=None)
        child = start_child(settings)
        wait_until(lambda: hanging_call_in_flight(server, shape), "the hung call")
        # The server answering is not enough: the proposal is finished once the child saved it.
        finished = sorted(shape.finished_in_hanging_layer)
        wait_until(
            lambda: stored_proposals(checkpoint_url, thread_config(settings)) == finished,
            f"{finished} saved",
        )
        child.kill()
        before = server.requests()
        assert call_counts(before) == dict.fromkeys(shape.models, 1)

        server.set_scripts({shape.hanging: ModelScript(reply=LATE)})
        result = resume_from(settings, mode)
        after = server.requests()
    check_resumed_run(shape, result, before, after)
    assert result["messages"][0].text == QUESTION


@pytest.mark.parametrize("feature", ["staircase", "samples-in-one-request"])
def test_killed_staircase_or_sampled_run_resumes_on_postgres(
    postgres_url: str, start_child: StartChild, feature: str
) -> None:
    """The other issues' features under a kill: a staircase's finished proposers (saved as its
    tasks end) and a batch of samples drawn in one request (saved as one write) are not paid
    again."""
    with ServerProcess(scripts_for(LITE)) as server:
        settings = settings_for(LITE, server, postgres_url, durability=None)
        if feature == "staircase":
            settings.update(options={"staircase": 8}, continuation="prefill")
            saved = ["p1", "p2"]
        else:
            settings["samples"] = {"p1": 3}
            saved = ["p1", "p1", "p1", "p2"]
        child = start_child(settings)
        wait_until(lambda: hanging_call_in_flight(server, LITE), "the hung call")
        wait_until(lambda: stored_proposals(postgres_url, thread_config(settings)) == saved,
                   f"{saved} saved")  # fmt: skip
        child.kill()
        before = server.requests()
        assert call_counts(before) == {"p1": 1, "p2": 1, "p3": 1}  # p1's samples: one request

        server.set_scripts({"p3": ModelScript(reply=LATE)})
        result = resume_from(settings, "ainvoke")
        after = server.requests()
    assert result["messages"][-1].text == FINAL
    counts = call_counts(after)
    assert {name: counts[name] for name in LITE.models} == {"p1": 1, "p2": 1, "p3": 2}
    assert counts[AGGREGATOR] >= 1 and set(counts) == {*LITE.models, AGGREGATOR}
    texts = sorted(p["text"] for p in result["proposals"])
    assert texts == sorted([*(reply_of(m) for m in saved), LATE])


def test_exit_durability_leaves_nothing_to_resume(tmp_path: Path, start_child: StartChild) -> None:
    """Why the mode matters: under ``durability="exit"`` the killed run saved no proposal."""
    url = f"sqlite:///{tmp_path / 'checkpoints.sqlite'}"
    with ServerProcess(scripts_for(LITE)) as server:
        settings = settings_for(LITE, server, url, "exit")
        child = start_child(settings)
        wait_until(lambda: hanging_call_in_flight(server, LITE), "the hung call")
        time.sleep(0.5)  # time enough to save the finished proposals, were they saved at all
        child.kill()
        assert stored_proposals(url, thread_config(settings)) == []
        with pytest.raises(EmptyInputError):
            resume_from(settings, "invoke")


# -- a cancelled run, an in-memory thread -------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer(scripts_for(DEEP)) as running:
        yield running


def in_memory_graph(
    server: OpenAICompatibleServer, saver: InMemorySaver, **settings: Any
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The ``DEEP`` mixture against ``server``, on threads kept in ``saver``."""

    def spec(model: str) -> ProposerSpec:
        key = SecretStr("sk-test-placeholder")
        return ProposerSpec(model=f"openai:{model}", base_url=server.base_url, api_key=key)

    proposers = [[spec(m) for m in layer] for layer in DEEP.proposers]
    graph = create_moa_graph(proposers, aggregator=spec(AGGREGATOR), max_retries=0, **settings)
    return graph.compile(checkpointer=saver)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_cancelled_run_resumes_without_calling_finished_proposers_again(
    server: OpenAICompatibleServer, mode: str
) -> None:
    saver = InMemorySaver()
    graph = in_memory_graph(server, saver, timeout=30.0)
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    finished = sorted(DEEP.finished_in_hanging_layer)

    async def interrupt_then_maybe_resume() -> tuple[list[RequestRecord], dict[str, Any] | None]:
        run = asyncio.ensure_future(graph.ainvoke({"messages": [("user", QUESTION)]}, config))
        deadline = time.monotonic() + WAIT_S
        while not (
            hanging_call_in_flight(server, DEEP) and saved_proposals(saver, config) == finished
        ):
            assert time.monotonic() < deadline and not run.done(), "layer 2 never got stuck"
            await asyncio.sleep(0.02)
        run.cancel()  # the caller gives up mid-layer 2
        with pytest.raises(asyncio.CancelledError):
            await run
        before = server.requests()
        server.set_script(DEEP.hanging, ModelScript(reply=LATE))
        # One event loop for both runs: an OpenAI async client does not survive its loop.
        resumed = await graph.ainvoke(None, config) if mode == "ainvoke" else None
        return before, resumed

    before, result = asyncio.run(interrupt_then_maybe_resume())
    assert call_counts(before) == dict.fromkeys(DEEP.models, 1)
    if result is None:
        result = graph.invoke(None, config)
    check_resumed_run(DEEP, result, before, server.requests())


def test_failed_layer_resumes_once_the_proposer_is_fixed(server: OpenAICompatibleServer) -> None:
    """A non-retryable error in layer 2 fails the run; resumed, only that proposer is called."""
    server.set_script(DEEP.hanging, ModelScript(reply=LATE, faults=["http_400"]))
    saver = InMemorySaver()
    graph = in_memory_graph(server, saver, min_proposals=3)
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    with pytest.raises(ProposalsFailedError, match="layer 2: 2 of 3 proposers answered"):
        graph.invoke({"messages": [("user", QUESTION)]}, config)
    before = server.requests()
    assert call_counts(before) == dict.fromkeys(DEEP.models, 1)
    assert server.requests_for(DEEP.hanging)[0].outcome == "http_400"

    result = graph.invoke(None, config)  # the fault is spent: the proposer answers now
    check_resumed_run(DEEP, result, before, server.requests())


def test_each_resume_calls_a_still_failing_proposer_once_more(
    server: OpenAICompatibleServer,
) -> None:
    """Layer 1 under ``ainvoke``: a resume that fails again leaves the thread resumable; once the
    proposer answers, the run goes on through layer 2 with its answer among the references."""
    server.set_script("p3", ModelScript(reply=reply_of("p3"), faults=["http_400", "http_400"]))
    server.set_script(DEEP.hanging, ModelScript(reply=reply_of(DEEP.hanging)))
    graph = in_memory_graph(server, InMemorySaver(), min_proposals=3)
    config: RunnableConfig = {"configurable": {"thread_id": "t2"}}

    async def run_then_resume_twice() -> list[Any]:
        outcomes: list[Any] = []
        for payload in ({"messages": [("user", QUESTION)]}, None, None):
            try:
                outcomes.append(await graph.ainvoke(payload, config))
            except ProposalsFailedError as error:
                outcomes.append(error)
        return outcomes

    first, second, third = asyncio.run(run_then_resume_twice())
    assert isinstance(first, ProposalsFailedError)
    assert isinstance(second, ProposalsFailedError)
    assert "layer 1: 2 of 3 proposers answered" in str(second)
    assert third["messages"][-1].text == FINAL
    assert all(p["status"] == "answered" for p in third["proposals"])
    records = server.requests()
    assert [r.outcome for r in records if r.model == "p3"] == ["http_400", "http_400", "stop"]
    assert call_counts(records) == {**dict.fromkeys(DEEP.models, 1), "p3": 3, AGGREGATOR: 1}
    layer_2_system = next(r for r in records if r.model == "q1").messages[0]["content"]
    assert reply_of("p3") in layer_2_system
