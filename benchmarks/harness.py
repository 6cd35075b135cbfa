"""Shared pieces of the performance benchmarks: the scripted server, the mixture, the ideal path.

The loopback server (``moa_graph.testing.ServerProcess``, a child process) scripts every model's
latency: time to first token, then a per-token delay, with real SSE streaming and usage. Each run
asks a unique question, so the server's request log attributes every request to its run; the
ideal critical path of a run is computed from the server's own scripted latencies:

    sum over proposer layers of max(scripted latency of that layer's requests)
    + the aggregator's scripted latency

(with ``first_k=k``: the k-th fastest proposer of each layer instead of the slowest).
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.baseline import AGGREGATOR, API_KEY, PROPOSERS
from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT
from moa_graph.testing import ModelScript, RequestRecord, ServerProcess

MARKER = AGGREGATE_AND_SYNTHESIZE_PROMPT.splitlines()[-1]  # "Responses from models:"


def scripts(*, tail_probability: float = 0.0, seed: int = 0, jitter: float = 0.2) -> dict:
    """Per-model scripts: every call 20-200 ms, short replies (few tokens: CPU stays the
    library's, not the JSON/SSE parsing of long answers)."""
    proposer_ttft = {"p1": 0.020, "p2": 0.040, "p3": 0.070, "p4": 0.100}
    out = {
        name: ModelScript(
            reply=f"Answer from {name}: forty two.", ttft=ttft, per_token=0.004,
            jitter=jitter, tail_probability=tail_probability, tail_factor=10.0,
            seed=seed * 100 + i,
        )
        for i, (name, ttft) in enumerate(proposer_ttft.items())
    }  # fmt: skip
    out[AGGREGATOR] = ModelScript(
        reply="The synthesized answer is forty two, as all models agree.", ttft=0.060,
        per_token=0.008, jitter=jitter, seed=seed * 100 + 99,
    )  # fmt: skip
    return out


def build_moa(base_url: str, *, layers: int = 3, **options: Any) -> ChatMixtureOfAgents:
    def spec(name: str) -> ProposerSpec:
        return ProposerSpec(model=f"openai:{name}", base_url=base_url, api_key=API_KEY)

    return ChatMixtureOfAgents(
        proposers=[spec(name) for name in PROPOSERS], aggregator=spec(AGGREGATOR),
        layers=layers, **options,
    )  # fmt: skip


def question(tag: str, i: int) -> str:
    return f"Question {tag}-{i}: what is six times seven?"


def _user_text(record: RequestRecord) -> str:
    for message in reversed(record.messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


def _has_references(record: RequestRecord) -> bool:
    return any(
        m.get("role") == "system" and MARKER in str(m.get("content")) for m in record.messages
    )


@dataclass
class RunPath:
    """One run's critical path, from the server's scripted latencies (seconds)."""

    proposer_layers: list[float]  # per proposer layer: the latency that must be waited for
    aggregator: float  # the aggregator's scripted latency
    aggregator_ttft: float  # the aggregator's scripted time to first token
    requests: int
    handoffs: list[float] = field(default_factory=list)
    """Per step after the first: the last answer of a step to the first request of the next."""
    first_request: float = 0.0  # epoch seconds the server read the run's first request
    last_answer: float = 0.0  # epoch seconds the server finished the run's last answer

    @property
    def ideal(self) -> float:
        return sum(self.proposer_layers) + self.aggregator

    @property
    def ideal_first_token(self) -> float:
        return sum(self.proposer_layers) + self.aggregator_ttft


def critical_paths(
    records: Iterable[RequestRecord], *, layers: int = 3, first_k: int | None = None
) -> dict[str, RunPath]:
    """Per question text: the run's ideal critical path.

    Proposer layer 1 requests carry no references; later layers carry the numbered references in
    the system message. With two or more reference layers, they are told apart by arrival order
    (a layer starts only after the one before finished).
    """
    by_question: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_question[_user_text(record)].append(record)
    paths = {}
    for text, group in by_question.items():
        group.sort(key=lambda r: r.received_at)
        aggs = [r for r in group if r.model == AGGREGATOR]
        proposals = [r for r in group if r.model != AGGREGATOR]
        width = len(PROPOSERS)
        layer_groups: list[list[RequestRecord]] = [[r for r in proposals if not _has_references(r)]]
        later = [r for r in proposals if _has_references(r)]
        for start in range(0, len(later), width):
            layer_groups.append(later[start : start + width])
        waits = []
        for layer in layer_groups:
            latencies = sorted(r.scripted_latency or 0.0 for r in layer)
            k = len(latencies) if first_k is None else min(first_k, len(latencies))
            waits.append(latencies[k - 1])
        agg = aggs[-1]
        steps = [*layer_groups, [agg]]
        handoffs = [
            min(r.received_at for r in after) - max(r.answered_at or r.received_at for r in before)
            for before, after in itertools.pairwise(steps)
        ]
        paths[text] = RunPath(
            waits, agg.scripted_latency or 0.0, agg.ttft or 0.0, len(group), handoffs,
            first_request=group[0].received_at,
            last_answer=max(r.answered_at or r.received_at for r in group),
        )  # fmt: skip
    return paths


def server_lag(records: Iterable[RequestRecord]) -> dict[str, float]:
    """How late the server answered against its own script (ms): its capacity check."""
    lags = [
        (r.answered_at - r.received_at - r.scripted_latency) * 1000
        for r in records
        if r.answered_at is not None and r.scripted_latency is not None and r.outcome == "stop"
    ]
    if not lags:
        return {}
    return {"p50_ms": round(percentile(lags, 50), 2), "p99_ms": round(percentile(lags, 99), 2),
            "max_ms": round(max(lags), 2), "requests": len(lags)}  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def start_server(**kwargs: Any) -> ServerProcess:
    return ServerProcess(scripts(**kwargs)).start()
