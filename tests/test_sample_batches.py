"""Samples of one model drawn in one request (``n``): against the loopback server, a fake that
ignores ``n``, and the embedded SmolLM2 (whose answer k is the draw of ``seed + k``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from moa_graph import ChatMixtureOfAgents, ProposerSpec, create_moa_graph
from moa_graph.local.chat_model import ChatLocalModel
from moa_graph.testing import FaultSpec, ModelScript, OpenAICompatibleServer
from tests.fakes import ScriptedChatModel

QUESTION = "What is 6 times 7?"


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    scripts = {"p": ModelScript(reply="It is 42."), "q": ModelScript(reply="Forty-two."),
               "agg": ModelScript(reply="42.")}  # fmt: skip
    with OpenAICompatibleServer(scripts) as running:
        yield running


def spec(server: OpenAICompatibleServer, model: str, **options: Any) -> ProposerSpec:
    return ProposerSpec(model=f"openai:{model}", base_url=server.base_url, api_key="sk-test",
                        **options)  # fmt: skip


def sampled(server: OpenAICompatibleServer, *, batched: bool | None = True, **settings: Any
            ) -> ChatMixtureOfAgents:  # fmt: skip
    proposers = [spec(server, "p", samples=3, samples_in_one_request=batched), spec(server, "q")]
    return ChatMixtureOfAgents(proposers=proposers, aggregator=spec(server, "agg"), layers=2,
                               seed=5, **settings)  # fmt: skip


def test_the_samples_of_a_model_are_one_request(server: OpenAICompatibleServer) -> None:
    answer = sampled(server).invoke(QUESTION)
    (request,) = server.requests_for("p")
    assert (request.params["n"], request.params["seed"]) == (3, 5)  # from sample 0's seed
    proposals = answer.response_metadata["proposals"]
    assert [p["proposer"] for p in proposals] == ["p #1", "p #2", "p #3", "q"]
    assert all(p["status"] == "answered" and p["text"] == "It is 42." for p in proposals[:3])
    # the request's usage once, on its first sample; the prompt was read once
    assert proposals[0]["usage"]["input_tokens"] == request.prompt_tokens
    assert proposals[1]["usage"] is None and proposals[2]["usage"] is None
    assert answer.usage_metadata is not None
    paid = sum(r.prompt_tokens for r in server.requests())
    assert answer.usage_metadata["input_tokens"] == paid
    assert server.requests_for("agg")[0].messages[0]["content"].count("It is 42.") == 3


async def test_async_runs_draw_the_samples_in_one_request_too(
    server: OpenAICompatibleServer,
) -> None:
    answer = await sampled(server).ainvoke(QUESTION)
    assert [r.params["n"] for r in server.requests_for("p")] == [3]
    assert answer.content == "42."


@pytest.mark.parametrize("use_async", [False, True])
async def test_samples_whose_calls_run_one_after_another_share_one_request(
    server: OpenAICompatibleServer, use_async: bool
) -> None:
    graph = create_moa_graph(
        [spec(server, "p", samples=3, samples_in_one_request=True), spec(server, "q")],
        aggregator=spec(server, "agg"), layers=2, seed=5,
    ).compile()  # fmt: skip
    # one task at a time: each sample's call starts once the one before it has ended
    state, config = {"messages": [HumanMessage(QUESTION)]}, {"max_concurrency": 1}
    result = await graph.ainvoke(state, config) if use_async else graph.invoke(state, config)
    assert [r.params["n"] for r in server.requests_for("p")] == [3]
    assert [p["text"] for p in result["proposals"][:3]] == ["It is 42."] * 3


def test_a_model_not_declared_is_sampled_one_request_a_sample(
    server: OpenAICompatibleServer,
) -> None:
    sampled(server, batched=None).invoke(QUESTION)
    requests = server.requests_for("p")
    assert sorted(r.params["seed"] for r in requests) == [5, 6, 7]
    assert all("n" not in r.params for r in requests)


def test_a_failed_request_is_retried_for_the_whole_batch(server: OpenAICompatibleServer) -> None:
    server.add_faults("p", FaultSpec("http_500"))
    answer = sampled(server, max_retries=1).invoke(QUESTION)
    assert [r.params["n"] for r in server.requests_for("p")] == [3, 3]
    assert [p["attempts"] for p in answer.response_metadata["proposals"][:3]] == [2, 2, 2]


def test_shuffled_references_give_each_sample_its_own_request(
    server: OpenAICompatibleServer,
) -> None:
    sampled(server, shuffle_references=True).with_config({}).invoke(QUESTION)  # layers=2
    assert [r.params["n"] for r in server.requests_for("p")] == [3]  # layer 1: no references
    three = ChatMixtureOfAgents(
        proposers=[spec(server, "p", samples=3, samples_in_one_request=True), spec(server, "q")],
        aggregator=spec(server, "agg"), layers=3, seed=5, shuffle_references=True,
    )  # fmt: skip
    server.reset()
    three.invoke(QUESTION)
    layer_two = [r for r in server.requests_for("p") if len(r.messages) > 1]
    assert len(layer_two) == 3 and all("n" not in r.params for r in layer_two)


def test_the_batch_is_one_traced_run_named_for_its_samples(
    server: OpenAICompatibleServer,
) -> None:
    collector = RunCollectorCallbackHandler()
    sampled(server).invoke(QUESTION, {"callbacks": [collector]})
    runs, todo = [], list(collector.traced_runs)
    while todo:
        run = todo.pop()
        runs.append(run)
        todo.extend(run.child_runs)
    (batch,) = [r for r in runs if r.run_type == "llm" and r.name.startswith("proposer 1.1")]
    assert batch.name == "proposer 1.1-3: p x3"
    assert batch.extra["metadata"]["moa_batch"] == [0, 1, 2]


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_layer_deadline_cuts_off_a_slow_batch_as_one(
    server: OpenAICompatibleServer, use_async: bool
) -> None:
    server.set_script("p", ModelScript(reply="It is 42.", ttft=3.0))
    moa = sampled(server, layer_timeout=0.5, min_proposals=1)
    answer = await moa.ainvoke(QUESTION) if use_async else moa.invoke(QUESTION)
    statuses = [p["status"] for p in answer.response_metadata["proposals"]]
    assert statuses == ["cancelled", "cancelled", "cancelled", "answered"]
    assert answer.content == "42."


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_sample_whose_request_was_given_up_by_another_call_times_out_by_itself(
    server: OpenAICompatibleServer, use_async: bool
) -> None:
    # one task at a time: the first sample's call makes the request and gives it up at its
    # deadline before the next sample's call starts; that call must fail the same way (a
    # timeout: the mixture's, or the HTTP client's, which the model built from a string
    # shares), not end the run as if it had been cancelled
    server.set_script("p", ModelScript(reply="It is 42.", ttft=1.0))
    graph = create_moa_graph(
        [spec(server, "p", samples=3, samples_in_one_request=True), spec(server, "q")],
        aggregator=spec(server, "agg"), layers=2, seed=5, timeout=0.3, max_retries=0,
    ).compile()  # fmt: skip
    state, config = {"messages": [HumanMessage(QUESTION)]}, {"max_concurrency": 1}
    result = await graph.ainvoke(state, config) if use_async else graph.invoke(state, config)
    layer_1 = [p for p in result["proposals"] if p["layer"] == 1]
    assert [p["status"] for p in layer_1] == ["failed"] * 3 + ["answered"]
    assert all("TimeoutError" in (p["error"] or "") for p in layer_1[:3])
    assert result["messages"][-1].content == "42."


class _OneAnswerOnly(ScriptedChatModel):
    """Declares samples in one request but answers once, as a server ignoring ``n`` would."""

    moa_samples_in_one_request: ClassVar[bool] = True


def test_a_server_that_ignores_n_fails_the_samples_naming_the_fix() -> None:
    model = _OneAnswerOnly(reply="7")
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=model, samples=2),
                                         ScriptedChatModel(reply="7")],
                              aggregator=ScriptedChatModel(reply="7"), layers=2,
                              max_retries=0)  # fmt: skip
    proposals = moa.invoke(QUESTION).response_metadata["proposals"]
    assert [p["status"] for p in proposals] == ["failed", "failed", "answered"]
    assert "samples_in_one_request=False" in proposals[0]["error"]
    assert len(model.calls) == 1


def recorded_requests(
    model: ChatLocalModel, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """The requests the embedded engine of ``model`` receives from now on, as it receives them."""
    engine = model._engine()
    requests: list[dict[str, Any]] = []
    real = engine.server

    class Recording:
        def handle_chat_completions(self, request: dict[str, Any], *callback: Any) -> Any:
            requests.append(request)
            return real.handle_chat_completions(request, *callback)

    monkeypatch.setattr(engine, "server", Recording())
    return requests


@pytest.mark.local_model
def test_embedded_samples_are_drawn_in_one_request_from_the_first_samples_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smol = ChatLocalModel(model="smollm2-135m", temperature=1.0, max_tokens=16, n_ctx=2048)
    requests = recorded_requests(smol, monkeypatch)
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=smol, samples=3)], aggregator=smol,
                              layers=2, seed=11, aggregation="vote")  # fmt: skip
    proposals = moa.invoke("Name a colour.").response_metadata["proposals"]
    (batch,) = [r for r in requests if r.get("n")]  # the aggregator's call, if any, has none
    assert (batch["n"], batch["seed"]) == (3, 11)  # answer k is the draw of seed 11 + k
    assert all(p["status"] == "answered" and p["text"] for p in proposals)
    assert len({p["text"] for p in proposals}) > 1  # three draws, not one answer three times
    assert proposals[0]["usage"]["input_tokens"] > 0
    assert [p["usage"]["input_tokens"] for p in proposals[1:]] == [0, 0]  # prompt read once


@pytest.mark.local_model
def test_embedded_samples_beyond_the_models_slots_take_more_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smol = ChatLocalModel(model="smollm2-135m", temperature=1.0, max_tokens=16, n_ctx=2048,
                          slots=2)  # fmt: skip
    requests = recorded_requests(smol, monkeypatch)
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=smol, samples=3)], aggregator=smol,
                              layers=2, seed=11, aggregation="vote")  # fmt: skip
    proposals = moa.invoke("Name a colour.").response_metadata["proposals"]
    # two slots: samples 1-2 in one request (seeds 11, 12), sample 3 alone with its seed, 13
    drawn = sorted((r.get("n", 1), r["seed"]) for r in requests[:2])
    assert drawn == [(1, 13), (2, 11)]
    assert [p["status"] for p in proposals] == ["answered"] * 3


@pytest.mark.parametrize("model_streams", [None, False, True])
def test_a_batch_is_not_streamed_when_the_caller_streams_messages(
    server: OpenAICompatibleServer, model_streams: bool | None
) -> None:
    # streamed, the n answers would come back merged into one by LangChain
    from langchain_openai import ChatOpenAI

    sampled: ProposerSpec = spec(server, "p", samples=3, samples_in_one_request=True)
    if model_streams is not None:  # a model instance, built to stream every call or not
        model = ChatOpenAI(model="p", base_url=server.base_url, api_key="sk-test",  # type: ignore[arg-type]
                           streaming=model_streams)  # fmt: skip
        sampled = ProposerSpec(model=model, samples=3, samples_in_one_request=True)
    graph = create_moa_graph(
        [sampled, spec(server, "q")],
        aggregator=spec(server, "agg"), layers=2, seed=5,
    ).compile()  # fmt: skip
    state = {"messages": [HumanMessage(QUESTION)]}
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream(state, stream_mode=["messages", "values"]):
        if mode == "values":
            final = chunk
    assert [p["status"] for p in final["proposals"]] == ["answered"] * 4
    (request,) = server.requests_for("p")
    assert (request.params["n"], request.stream) == (3, False)
