"""``rank``: the aggregator picks the best reference, which is returned verbatim.

The MoA paper compares its aggregator with an "LLM-ranker" that only *selects* one of the
proposals (its appendix prompt is adapted from AlpacaEval's ranking prompt). ``ranker_messages``
builds that prompt and ``parse_ranker_choice`` reads the choice; an unreadable reply picks the
first reference. The evaluation harness's best-of-n baseline uses the same prompt.

Example:
    >>> messages = ranker_messages("2 + 2?", ["5", "4"])
    >>> "model_2" in messages[-1].content
    True
    >>> parse_ranker_choice("model_2", 2)
    1
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from moa_graph.strategies.base import AggregationFlow, FinalAnswerSteps, Strategy

RANKER_SYSTEM_PROMPT = (
    "You are a highly efficient assistant, who evaluates and selects the best large language "
    "model (LLMs) based on the quality of their responses to a given instruction. This process "
    "will be used to create a leaderboard reflecting the most accurate and human-preferred "
    "answers."
)

RANKER_PROMPT = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{instruction}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{outputs}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): {identifiers}.

## Best Model Identifier
"""  # noqa: E501


def candidate_id(index: int) -> str:
    """The identifier shown for candidate ``index`` (0-based): ``model_1``, ``model_2``, ..."""
    return f"model_{index + 1}"


def ranker_messages(instruction: str, candidates: Sequence[str]) -> list[BaseMessage]:
    """The ranker's conversation: which of ``candidates`` answers ``instruction`` best.

    Example:
        >>> print(ranker_messages("Hi?", ["a", "b"])[-1].content.splitlines()[4])
        {"instruction": "Hi?"}
    """
    if not candidates:
        raise ValueError("the ranker needs at least one candidate answer")
    outputs = ",\n".join(
        json.dumps({"model_identifier": candidate_id(i), "output": text}, ensure_ascii=False)
        for i, text in enumerate(candidates)
    )
    prompt = RANKER_PROMPT.format(
        instruction=json.dumps({"instruction": instruction}, ensure_ascii=False),
        outputs=f"[\n{outputs}\n]",
        identifiers=", ".join(candidate_id(i) for i in range(len(candidates))),
    )
    return [SystemMessage(RANKER_SYSTEM_PROMPT), HumanMessage(prompt)]


_IDENTIFIER = re.compile(r"model[_ ]?(\d+)", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"^\W*(\d+)\W*$")


def parse_ranker_choice(reply: str, n: int) -> int | None:
    """The 0-based index of the candidate the ranker picked, or ``None`` if unreadable.

    The first valid ``model_K`` identifier counts; a reply that is only a number is read as K.

    Example:
        >>> parse_ranker_choice("Best: model_3 (model_1 was close)", 3)
        2
        >>> parse_ranker_choice("2", 3), parse_ranker_choice("model_9", 3)
        (1, None)
    """
    for match in _IDENTIFIER.finditer(reply):
        k = int(match.group(1))
        if 1 <= k <= n:
            return k - 1
    bare = _BARE_NUMBER.match(reply)
    if bare and 1 <= int(bare.group(1)) <= n:
        return int(bare.group(1)) - 1
    return None


def instruction_text(messages: Sequence[BaseMessage]) -> str:
    """What a ranker or judge is shown as the instruction: the user turn, with earlier turns.

    Example:
        >>> from langchain_core.messages import AIMessage, HumanMessage
        >>> instruction_text([HumanMessage("Hi"), AIMessage("Hello"), HumanMessage("Bye?")])
        'User: Hi\\n\\nAssistant: Hello\\n\\nUser: Bye?'
    """
    turns = [m for m in messages if m.type in ("human", "ai")]
    if len(turns) == 1:
        return turns[0].text
    roles = {"human": "User", "ai": "Assistant"}
    return "\n\n".join(f"{roles[m.type]}: {m.text}" for m in turns)


class Rank(Strategy):
    name = "rank"
    summary = "the aggregator picks the best reference (the paper's LLM-ranker), verbatim"
    order = 30
    picks_reference = True

    def flow(self, steps: FinalAnswerSteps) -> AggregationFlow:
        if len(steps.refs) == 1:  # nothing to choose between
            steps.extra["moa_rank"] = {"reply": None, "parsed": False}
            return steps.verbatim(0)
        messages = ranker_messages(steps.instruction(), steps.refs)
        reply = yield steps.ask_aggregator(messages, role="ranker", step="rank")
        chosen = parse_ranker_choice(reply.text, len(steps.refs))
        steps.extra["moa_rank"] = {"reply": reply.text, "parsed": chosen is not None}
        return steps.verbatim(0 if chosen is None else chosen)


STRATEGY = Rank()
