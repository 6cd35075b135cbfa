"""RAG: ``retriever | format | prompt | moa | parser`` with the context reaching every proposer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from langchain_core.messages import SystemMessage

from moa_graph import ChatMixtureOfAgents
from tests.fakes import ScriptedChatModel

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rag.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moa_rag_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rag = load_example()


def test_the_hashing_embedding_retrieves_the_relevant_passage() -> None:
    store = rag.InMemoryVectorStore.from_texts(rag.DOCUMENTS, embedding=rag.HashingEmbeddings())
    found = store.similarity_search("How many layers does MoA-Lite use?", k=1)
    assert found[0].page_content.startswith("MoA-Lite uses two layers")


def test_retrieved_context_reaches_every_proposer_and_the_aggregator() -> None:
    proposers = [ScriptedChatModel(reply=f"two layers ({n})", model_name=n) for n in "ab"]
    aggregator = ScriptedChatModel(reply="MoA-Lite uses two layers.")
    moa = ChatMixtureOfAgents(proposers=proposers, aggregator=aggregator, layers=3)
    chain = rag.build_chain(moa, k=2)

    assert chain.invoke("How many layers does MoA-Lite use?") == "MoA-Lite uses two layers."

    for model in [*proposers, aggregator]:
        for messages in model.calls:  # layers 1 and 2, then the aggregator
            assert isinstance(messages[0], SystemMessage)
            assert "[1] MoA-Lite uses two layers" in messages[0].text
            assert messages[-1].text == "How many layers does MoA-Lite use?"
    assert [len(p.calls) for p in proposers] == [2, 2]
    assert "two layers (a)" in aggregator.calls[0][0].text  # the references follow the context


def test_the_chain_streams_the_aggregators_answer() -> None:
    proposers = [ScriptedChatModel(reply="x"), ScriptedChatModel(reply="y")]
    moa = ChatMixtureOfAgents(
        proposers=proposers, aggregator=ScriptedChatModel(reply="a b c"), layers=2
    )
    tokens = list(rag.build_chain(moa).stream("Self-MoA?"))
    assert "".join(tokens) == "a b c"
    assert len(tokens) > 1
