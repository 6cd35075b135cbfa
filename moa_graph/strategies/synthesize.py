"""``synthesize``, the paper's: the aggregator writes a new answer from the references.

With ``aggregation_window`` (Self-MoA-Seq), it synthesizes at most that many references per call,
sliding over the rest with the previous synthesis as the first reference.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage

from moa_graph.aggregation import windows
from moa_graph.strategies.base import AggregationFlow, FinalAnswerSteps, Strategy


class Synthesize(Strategy):
    name = "synthesize"
    summary = "the aggregator writes the answer from the references (the paper's)"
    order = 10
    with_votes = False

    def flow(self, steps: FinalAnswerSteps) -> AggregationFlow:
        groups = windows(len(steps.refs), steps.aggregation_window)
        best: BaseMessage | None = None
        for number, group in enumerate(groups, start=1):
            texts = ([best.text] if best is not None else []) + [steps.refs[p] for p in group]
            note = steps.votes(texts).summary() if self.with_votes else None
            step = None if number == len(groups) else f"window {number} of {len(groups)}"
            best = yield steps.synthesis(texts, note, step=step)
        if len(groups) > 1:
            steps.extra["moa_windows"] = steps.window_positions(groups)
        assert best is not None
        return best


STRATEGY = Synthesize()
