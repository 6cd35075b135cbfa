"""``weighted_vote``: each reference's final answer counts as much as its model was confident.

Confidence-Informed Self-Consistency (CISC, Taubenfeld et al., arXiv 2502.06233): each answer's
vote is weighted by a softmax of its confidence (here the mean log-probability of its tokens,
divided by ``confidence_temperature``), and the answer with the most weight wins; its most
confident reference is returned verbatim, with no aggregator call. The authors report the same
accuracy as a plain majority vote with over 40% fewer samples, across nine models and four data
sets. References without a readable final answer do not vote; when no reference has a
confidence, or the weights tie, the aggregator decides as in ``vote``.
"""

from __future__ import annotations

from moa_graph.confidence import clear_winner, weighted_votes
from moa_graph.strategies.base import AggregationFlow, FinalAnswerSteps, Strategy


class WeightedVote(Strategy):
    name = "weighted_vote"
    summary = "final answers weighted by their models' token confidence (CISC), verbatim"
    order = 25
    needs_extractor = True
    needs_confidence = True
    picks_reference = True

    def flow(self, steps: FinalAnswerSteps) -> AggregationFlow:
        count = steps.votes(steps.refs)
        record = steps.extra["moa_votes"] = count.record()
        record["confidences"] = list(steps.confidences)
        totals = weighted_votes(count.answers, steps.confidences, steps.confidence_temperature)
        if totals:
            record["weights"] = {answer: round(total, 4) for answer, total in totals.items()}
        winner = clear_winner(totals)
        if winner is not None:
            record["winner"], record["decided_by"] = winner, "confidence-weighted majority"
            backers = [p for p, answer in enumerate(count.answers)
                       if answer == winner and steps.confidences[p] is not None]  # fmt: skip
            return steps.verbatim(max(backers, key=lambda p: steps.confidences[p] or 0.0))
        record["winner"], record["decided_by"] = None, "aggregator"
        return (yield steps.synthesis(steps.refs, count.summary()))


STRATEGY = WeightedVote()
