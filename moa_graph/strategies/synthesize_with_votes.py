"""``synthesize_with_votes``: ``synthesize``, with the aggregator told how the answers split.

The note after the references counts the final answers the references state (read by the
``answer_extractor``), so the aggregator sees agreement without being bound by it.
"""

from __future__ import annotations

from moa_graph.strategies.synthesize import Synthesize


class SynthesizeWithVotes(Synthesize):
    name = "synthesize_with_votes"
    summary = "synthesize, told how the references' final answers split"
    order = 40
    needs_extractor = True
    with_votes = True


STRATEGY = SynthesizeWithVotes()
