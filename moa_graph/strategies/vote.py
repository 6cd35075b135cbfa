"""``vote``: the most common final answer wins, its first reference returned verbatim.

The references' final answers are read by the ``answer_extractor`` and counted; the first
reference stating the most common one is the answer, with no aggregator call. A tie, or no
readable answer, is left to the aggregator, told how the answers split. Where the models give
token log-probabilities at no cost (the embedded models), each answer's confidence is recorded
beside its vote; it does not change the count (``weighted_vote`` weighs by it).
"""

from __future__ import annotations

from moa_graph.strategies.base import AggregationFlow, FinalAnswerSteps, Strategy


class Vote(Strategy):
    name = "vote"
    summary = "majority of the references' final answers, returned verbatim (ties: aggregator)"
    order = 20
    needs_extractor = True
    wants_confidence = True
    picks_reference = True

    def flow(self, steps: FinalAnswerSteps) -> AggregationFlow:
        count = steps.votes(steps.refs)
        steps.extra["moa_votes"] = count.record()
        if any(confidence is not None for confidence in steps.confidences):
            steps.extra["moa_votes"]["confidences"] = list(steps.confidences)
        if count.winner is not None:
            steps.extra["moa_votes"]["decided_by"] = "majority"
            return steps.verbatim(count.groups[count.winner][0])
        steps.extra["moa_votes"]["decided_by"] = "aggregator"
        return (yield steps.synthesis(steps.refs, count.summary()))


STRATEGY = Vote()
