"""Every invalid configuration fails at construction with a message naming the problem."""

from __future__ import annotations

import pytest

from moa_graph import ChatMixtureOfAgents, ProposerSpec, create_aggregator, create_moa_graph
from tests.fakes import ScriptedChatModel

M = ScriptedChatModel()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proposers": []}, "proposers"),
        ({"proposers": [M], "layers": 1}, "layers: must be at least 2"),
        ({"proposers": [M], "layers": 0}, "layers: must be at least 2"),
        ({"proposers": [[M], [M]], "layers": 4}, "2 proposer layers given but layers=4 needs 3"),
        ({"proposers": [[M], []]}, "layer 2 has no proposers"),
        ({"proposers": [M, [M]]}, "mix of models and lists"),
        ({"proposers": ["nosuch:model-x"]}, "proposers[0]: unknown provider 'nosuch'"),
        ({"proposers": [M, "openai:"]}, "proposers[1]: 'openai:' names no model"),
        ({"proposers": [M], "aggregator": "nosuch:x"}, "aggregator: unknown provider 'nosuch'"),
        (
            {"proposers": [M], "prompt": "  "},
            "prompt: the aggregation prompt must be a non-empty string",
        ),
        ({"proposers": [M, M], "min_proposals": 3}, "min_proposals: 3 is more than the 2"),
        ({"proposers": [M], "min_proposals": 0}, "min_proposals: must be an integer >= 1"),
        ({"proposers": [42]}, "proposers[0]: expected a chat model"),
        ({"proposers": [{"model": M, "samples": 0}]}, "proposers[0]"),
        ({"proposers": [{"model": M, "bogus": 1}]}, "bogus"),
    ],
)
def test_invalid_graph_configurations_raise_value_error(kwargs: dict, message: str) -> None:
    kwargs = {"aggregator": M, **kwargs}
    with pytest.raises(ValueError, match=_literal(message)):
        create_moa_graph(kwargs.pop("proposers"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proposers": [M], "layers": 1}, "layers: must be at least 2"),
        ({"proposers": [M], "temperature": 3.0}, "temperature"),
        ({"proposers": [M], "max_tokens": 0}, "max_tokens"),
        ({"proposers": ["nosuch:x"]}, "unknown provider 'nosuch'"),
    ],
)
def test_invalid_chat_model_configurations_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=_literal(message)):
        ChatMixtureOfAgents(aggregator=M, **kwargs)


def test_spec_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="system_prompt"):
        ProposerSpec(model=M, system_prompt=" ")
    with pytest.raises(ValueError, match="model"):
        ProposerSpec(model="")


def test_create_aggregator_refuses_an_empty_prompt() -> None:
    with pytest.raises(ValueError, match="prompt"):
        create_aggregator(M, prompt="")


def _literal(text: str) -> str:
    import re

    return re.escape(text)
