"""Resilience figures: faults survived, paid calls lost, and a hanging proposer's cost.

Runs seeded MoA runs (4 proposers x 2 proposer layers, real ``ChatOpenAI`` clients) against the
loopback server in a separate process, injecting a random fault into some requests: 429 with
Retry-After, 500, 503, reset connection, malformed JSON, empty answer, a hang. Reports:

- faults survived: runs that still produced an answer, out of runs that met a fault;
- calls lost: answered (HTTP 200, non-empty) proposer requests whose text did not reach the
  result's proposals (a paid call thrown away);
- the wall time of a run whose one proposer hangs, against the per-call timeout.

Run: ``python -m benchmarks.resilience`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.testing import FaultSpec, ModelScript, ServerProcess

FAULTS: list[Any] = [
    FaultSpec("http_429", retry_after=0.05), "http_500", "http_503", "reset",
    "malformed_json", "empty", "hang",
]  # fmt: skip
PROPOSERS = ["p1", "p2", "p3", "p4"]


def build(server: ServerProcess, timeout: float, layers: int = 3) -> ChatMixtureOfAgents:
    def spec(name: str) -> ProposerSpec:
        return ProposerSpec(model=f"openai:{name}", base_url=server.base_url,
                            api_key="sk-bench-placeholder")  # fmt: skip

    return ChatMixtureOfAgents(
        proposers=[spec(name) for name in PROPOSERS], aggregator=spec("agg"), layers=layers,
        timeout=timeout, max_retries=2,
    )  # fmt: skip


def fault_runs(runs: int, seed: int, fault_rate: float, timeout: float) -> dict[str, Any]:
    rng = random.Random(seed)
    scripts = {name: ModelScript(ttft=0.01) for name in [*PROPOSERS, "agg"]}
    survived = met_fault = injected = lost = 0
    with ServerProcess(scripts) as server:
        moa = build(server, timeout)
        for run in range(runs):
            server.reset()
            planned = 0
            for name in PROPOSERS:
                faults = [rng.choice(FAULTS) for _ in range(3) if rng.random() < fault_rate]
                if faults:
                    server.set_scripts({name: ModelScript(ttft=0.01, faults=faults)})
                    planned += len(faults)
            try:
                answer = moa.invoke(f"question {run}")
                survived += planned > 0
                used = {p["text"] for p in answer.response_metadata["proposals"]}
            except Exception:
                used = set()
            met_fault += planned > 0
            log = server.requests()
            injected += sum(r.outcome not in ("stop", "length", "pending") for r in log)
            lost += sum(1 for r in log if _paid_but_unused(r, used))
            server.set_scripts({name: ModelScript(ttft=0.01) for name in PROPOSERS})
    return {"runs": runs, "runs_with_faults": met_fault, "survived": survived,
            "faults_injected": injected, "calls_lost": lost}  # fmt: skip


def _paid_but_unused(record: Any, used: set[str]) -> bool:
    """A proposer request that was answered (and so paid for) but whose text went unused."""
    answered = record.outcome == "stop" and bool(record.response)
    return record.model != "agg" and answered and record.response not in used


def hanging_proposer(timeout: float) -> dict[str, float]:
    scripts = {name: ModelScript(ttft=0.05) for name in [*PROPOSERS, "agg"]}
    scripts["p4"] = ModelScript(faults=["hang"])
    with ServerProcess(scripts) as server:
        moa = build(server, timeout, layers=2)
        started = time.perf_counter()
        moa.invoke("question")
        wall = time.perf_counter() - started
    return {"timeout_s": timeout, "wall_s": round(wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    report = {
        "faults": fault_runs(args.runs, args.seed, args.fault_rate, args.timeout),
        "hanging_proposer": hanging_proposer(args.timeout),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
