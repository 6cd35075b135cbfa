"""``weighted_vote``: final answers weighted by their models' token confidence (CISC)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.local.chat_model import ChatLocalModel
from tests.fakes import ScriptedChatModel

QUESTION = "What is 3 + 4?"


class ConfidentModel(ScriptedChatModel):
    """Answers ``reply``; asked for log-probabilities, gives every token ``mean_logprob``."""

    logprobs: bool = False
    mean_logprob: float = -0.5

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:  # fmt: skip
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        if kwargs.get("logprobs", self.logprobs):
            tokens = [
                {"token": word, "logprob": self.mean_logprob} for word in message.text.split()
            ]
            message.response_metadata["logprobs"] = {"content": tokens}
        return ChatResult(generations=[ChatGeneration(message=message)])


def mixture(temperature: float = 0.25, **settings: Any) -> tuple[ChatMixtureOfAgents, list[Any]]:
    proposers = [ConfidentModel(reply="The answer is 7.", mean_logprob=-1.0),
                 ConfidentModel(reply="It is 7.", mean_logprob=-1.2),
                 ConfidentModel(reply="The answer is 9.", mean_logprob=-0.05)]  # fmt: skip
    aggregator = ScriptedChatModel(reply="aggregated")
    settings = {"aggregation": "weighted_vote", "confidence_temperature": temperature, **settings}
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, layers=2, **settings)
    return moa, [*proposers, aggregator]


def test_a_confident_answer_outweighs_two_unsure_ones() -> None:
    moa, models = mixture()
    answer = moa.invoke(QUESTION)
    assert answer.content == "The answer is 9."
    votes = answer.response_metadata["moa_votes"]
    assert votes["decided_by"] == "confidence-weighted majority" and votes["winner"] == "9"
    assert votes["answers"] == ["7", "7", "9"]  # a plain majority would have said 7
    assert votes["confidences"] == pytest.approx([0.3679, 0.3012, 0.9512], abs=1e-4)
    assert votes["weights"]["9"] > 0.9
    assert all(kwargs.get("logprobs") is True for model in models[:3]
               for kwargs in model.call_kwargs)  # fmt: skip
    assert models[3].calls == []  # decided without the aggregator
    proposals = answer.response_metadata["proposals"]
    assert [p["confidence"] for p in proposals] == votes["confidences"]


def test_a_high_temperature_lets_the_majority_win() -> None:
    answer = mixture(temperature=10.0)[0].invoke(QUESTION)
    assert answer.content == "The answer is 7."  # the more confident of the two sevens
    assert answer.response_metadata["moa_votes"]["winner"] == "7"


def test_a_model_that_cannot_give_log_probabilities_is_refused_naming_it() -> None:
    blind = ProposerSpec(model=ScriptedChatModel(reply="7"), name="blind")
    with pytest.raises(ValueError, match=r"blind \(fake-model\) cannot return"):
        ChatMixtureOfAgents(proposers=[ConfidentModel(), blind], aggregator=ConfidentModel(),
                            layers=2, aggregation="weighted_vote")  # fmt: skip
    plain = ChatMixtureOfAgents(proposers=[ConfidentModel(), blind], aggregator=ConfidentModel(),
                                layers=2)  # fmt: skip
    with pytest.raises(ValueError, match="cannot return"):  # chosen for one run: before calls
        plain.invoke(QUESTION, {"configurable": {"moa": {"aggregation": "weighted_vote"}}})
    assert blind.model.calls == []  # type: ignore[union-attr]


def test_a_vote_asks_no_log_probabilities_that_cost_anything() -> None:
    moa, models = mixture(aggregation="vote")
    answer = moa.invoke(QUESTION)
    assert answer.content == "The answer is 7."
    assert all("logprobs" not in kwargs for model in models[:3] for kwargs in model.call_kwargs)
    assert "confidences" not in answer.response_metadata["moa_votes"]


class CheapConfidence(ConfidentModel):
    moa_cheap_logprobs: ClassVar[bool] = True


def test_a_vote_records_cheap_confidences_without_counting_them() -> None:
    proposers = [CheapConfidence(reply="The answer is 7.", mean_logprob=-1.0),
                 CheapConfidence(reply="It is 7.", mean_logprob=-1.2),
                 CheapConfidence(reply="The answer is 9.", mean_logprob=-0.05)]  # fmt: skip
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=ScriptedChatModel(), layers=2,
                              aggregation="vote")  # fmt: skip
    answer = moa.invoke(QUESTION)
    assert answer.content == "The answer is 7."  # the count decides, not the confidence
    votes = answer.response_metadata["moa_votes"]
    assert votes["confidences"] == pytest.approx([0.3679, 0.3012, 0.9512], abs=1e-4)


@pytest.mark.local_model
def test_embedded_samples_carry_their_confidence_into_the_vote() -> None:
    smol = ChatLocalModel(model="smollm2-135m", temperature=0.8, max_tokens=16, n_ctx=2048)
    moa = ChatMixtureOfAgents(proposers=[ProposerSpec(model=smol, samples=3)], aggregator=smol,
                              layers=2, seed=3, aggregation="weighted_vote")  # fmt: skip
    answer = moa.invoke("What is 2 + 2? Answer with a number.")
    confidences = [p["confidence"] for p in answer.response_metadata["proposals"]]
    assert len(confidences) == 3 and all(0 < c <= 1 for c in confidences)
    assert answer.response_metadata["moa_votes"]["confidences"] == confidences
