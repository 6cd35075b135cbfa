"""The compiled mixture as a node of a parent graph whose state is not ``MessagesState``.

A parent whose state has ``messages`` needs no glue: ``parent.add_node("moa", graph)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda


def as_node(
    graph: Runnable[Any, Any], *, input_key: str = "question", output_key: str = "answer"
) -> Runnable[Mapping[str, Any], dict[str, str]]:
    """Wrap a compiled MoA graph for a parent state that keeps a question and an answer as text.

    The node asks ``state[input_key]`` as one user message and writes the final answer's text to
    ``output_key``. It runs the graph as a subgraph: the parent's checkpointer, interrupts and
    ``stream(..., subgraphs=True)`` reach it, sync and async.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> from langgraph.graph import START, StateGraph
        >>> from typing_extensions import TypedDict
        >>> from moa_graph import create_moa_graph
        >>> def fake(text):
        ...     return GenericFakeChatModel(messages=iter([AIMessage(text)] * 4))
        >>> moa = create_moa_graph([fake("A")], aggregator=fake("42"), layers=2).compile()
        >>> class QA(TypedDict):
        ...     question: str
        ...     answer: str
        >>> parent = StateGraph(QA)
        >>> parent = parent.add_node("moa", as_node(moa)).add_edge(START, "moa").compile()
        >>> parent.invoke({"question": "6 x 7?"})["answer"]
        '42'
    """

    def ask(state: Mapping[str, Any]) -> dict[str, Any]:
        return {"messages": [HumanMessage(state[input_key])]}

    def answer(result: Mapping[str, Any]) -> dict[str, str]:
        return {output_key: result["messages"][-1].text}

    def run(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, str]:
        return answer(graph.invoke(ask(state), config))

    async def arun(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, str]:
        return answer(await graph.ainvoke(ask(state), config))

    return RunnableLambda(run, afunc=arun, name=f"{getattr(graph, 'name', 'moa')}_node")
