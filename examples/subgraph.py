"""The mixture as a node of a larger graph, with a human approval step, offline.

Two parents share one compiled mixture (the embedded ``local-tiny`` preset: two SmolLM2-135M
samples aggregated by SmolLM2, no API key):

1. ``MessagesState``: ``parent.add_node("moa", moa)`` with no glue; a ``review`` node after it
   pauses with ``interrupt()`` until ``Command(resume=...)``; the parent's checkpointer keeps
   the thread; ``stream(..., subgraphs=True)`` shows the mixture's progress events.
2. ``{"question", "answer"}``: ``as_node(moa, input_key="question", output_key="answer")``.

Run:
    python examples/subgraph.py "Name one use of a mixture of agents."
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from moa_graph.presets import local_tiny
from moa_graph.subgraph import as_node


def review(state: MessagesState) -> dict[str, Any]:
    """Pause for a human: the resume value decides whether the draft is kept."""
    verdict = interrupt({"draft": state["messages"][-1].text})
    return {"messages": [AIMessage(f"(reviewer: {verdict})")]}


def chat_parent(moa: Any) -> Any:
    parent = StateGraph(MessagesState)
    parent.add_node("moa", moa)  # the compiled mixture itself is the node
    parent.add_node("review", review)
    parent.add_edge(START, "moa")
    parent.add_edge("moa", "review")
    parent.add_edge("review", END)
    return parent.compile(checkpointer=InMemorySaver())


class QA(TypedDict, total=False):
    question: str
    answer: str


def main(question: str) -> None:
    moa = local_tiny().graph().compile(name="moa")
    app = chat_parent(moa)
    config = {"configurable": {"thread_id": "example"}}
    for namespace, event in app.stream(
        {"messages": [HumanMessage(question)]}, config, subgraphs=True, stream_mode="custom"
    ):
        print(f"{namespace[0].split(':')[0]}: {event['moa_event']} (layer {event['layer']})",
              file=sys.stderr)  # fmt: skip
    pending = app.get_state(config).interrupts
    print("draft:", pending[0].value["draft"])
    done = app.invoke(Command(resume="approved"), config)
    print(done["messages"][-1].text)

    qa = StateGraph(QA).add_node("moa", as_node(moa)).add_edge(START, "moa").compile()
    print("answer:", qa.invoke({"question": question})["answer"])


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "Name one use of a mixture of agents.")
