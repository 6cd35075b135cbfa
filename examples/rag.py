"""Retrieval-augmented generation with a mixture of agents, offline.

``retriever | format_docs | prompt | moa | StrOutputParser()``: the retrieved passages go into
the prompt, so every proposer (and the aggregator) answers from the same context. The vector
store is LangChain's ``InMemoryVectorStore`` with a small deterministic hashing embedding (bag of
words, no model to download); the mixture is the embedded ``local-tiny`` preset (two SmolLM2-135M
samples aggregated by SmolLM2, no API key).

Run:
    python examples/rag.py "Which layer count is MoA-Lite?"
"""

from __future__ import annotations

import hashlib
import math
import re
import sys

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

DOCUMENTS = [
    "Mixture-of-Agents (MoA) layers several LLM proposers; each later layer sees all answers "
    "of the layer before, and a final aggregator writes one answer.",
    "MoA-Lite uses two layers: one layer of proposers, then the aggregator.",
    "The paper's MoA uses three layers and reached 65.1% length-controlled win rate on "
    "AlpacaEval 2.0.",
    "The Aggregate-and-Synthesize prompt asks the aggregator to critically evaluate the "
    "responses, which may be biased or incorrect.",
    "Self-MoA samples one strong model several times instead of mixing different models.",
]

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question using only this context:\n\n{context}"),
        ("human", "{question}"),
    ]
)


class HashingEmbeddings(Embeddings):
    """Deterministic bag-of-words embedding: each word hashed into ``size`` buckets, normalized.

    Example:
        >>> emb = HashingEmbeddings(size=64)
        >>> emb.embed_query("two layers") == emb.embed_query("Two layers!")
        True
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed each text."""
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        vector = [0.0] * self.size
        for word in re.findall(r"[a-z0-9\-]+", text.lower()):
            bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
            vector[bucket % self.size] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]


def format_docs(docs: list[Document]) -> str:
    """Number the retrieved passages, one per line.

    Example:
        >>> format_docs([Document("a"), Document("b")])
        '[1] a\\n[2] b'
    """
    return "\n".join(f"[{i + 1}] {doc.page_content}" for i, doc in enumerate(docs))


def build_chain(model: BaseChatModel, *, k: int = 2) -> Runnable[str, str]:
    """``retriever | format_docs | prompt | model | StrOutputParser()`` over ``DOCUMENTS``.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> build_chain(FakeListChatModel(responses=["two"])).invoke("MoA-Lite layers?")
        'two'
    """
    store = InMemoryVectorStore.from_texts(DOCUMENTS, embedding=HashingEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": k})
    context = retriever | RunnableLambda(format_docs)
    return (
        {"context": context, "question": RunnablePassthrough()} | PROMPT | model | StrOutputParser()
    )


def main(question: str) -> None:
    """Answer ``question`` from the documents with the embedded ``local-tiny`` mixture."""
    from moa_graph.presets import local_tiny

    chain = build_chain(local_tiny().chat_model())
    for token in chain.stream(question):
        print(token, end="", flush=True)
    print()


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "How many layers does MoA-Lite use?")
