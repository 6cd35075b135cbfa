"""Crash and resume on PostgreSQL: a worker killed mid-layer, the run finished by another process.

Each trial is seeded. A 3-layer mixture (two proposer layers of 4 proposers, then the
aggregator) runs against the scripted loopback server, each call answering after a latency drawn
from the seed. A worker process runs it on a thread kept in PostgreSQL (a throwaway server this
benchmark starts), and is killed with SIGKILL while layer 1, layer 2 or the aggregation is under
way (the trials cycle through the three). This process then resumes the thread with
``invoke(None)`` and must finish the run.

Reported: runs finished by the other process; proposer calls made again although their answer
was saved before the kill (the target is 0); calls in flight at the kill, or answered but not yet
saved when the worker died, which are made again by design.

Run: ``python -m benchmarks.crash_resume`` (part of ``make bench``); ``--trials N``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from moa_graph import ProposerSpec, create_moa_graph
from moa_graph.checkpoints import checkpointer
from moa_graph.testing import ModelScript, PostgresServer, ServerProcess

LAYERS = (("p1", "p2", "p3", "p4"), ("q1", "q2", "q3", "q4"))
AGGREGATOR, FINAL, QUESTION = "agg", "The final answer.", "What should I see in Rome?"
PHASES = ("layer 1", "layer 2", "aggregation")


def _phase_models(phase: str) -> tuple[str, ...]:
    return {"layer 1": LAYERS[0], "layer 2": LAYERS[1], "aggregation": (AGGREGATOR,)}[phase]


def scripts(seed: int) -> dict[str, ModelScript]:
    """Every call answers after a latency drawn from ``seed`` (0.2 to 1.0 s)."""
    rng = random.Random(seed)
    models = [*LAYERS[0], *LAYERS[1], AGGREGATOR]
    return {model: ModelScript(reply=FINAL if model == AGGREGATOR else f"Answer of {model}.",
                               ttft=rng.uniform(0.2, 1.0), per_token=0.0, jitter=0.0)
            for model in models}  # fmt: skip


def build(base_url: str, saver: BaseCheckpointSaver[Any]) -> Any:
    def spec(model: str) -> ProposerSpec:
        return ProposerSpec(model=f"openai:{model}", base_url=base_url, api_key="sk-bench")

    graph = create_moa_graph([[spec(m) for m in layer] for layer in LAYERS],
                             aggregator=spec(AGGREGATOR), timeout=60, max_retries=0)  # fmt: skip
    return graph.compile(checkpointer=saver)


def worker(settings: dict[str, str]) -> None:
    """The worker process: run the mixture on its thread (it is meant to be killed)."""
    with checkpointer(settings["url"]) as saver:
        build(settings["base_url"], saver).invoke(
            {"messages": [("user", QUESTION)]}, {"configurable": {"thread_id": settings["thread"]}}
        )


def saved_models(url: str, thread: str) -> set[str]:
    """The proposers whose answers the thread has saved (finished steps and pending writes)."""
    with checkpointer(url) as saver:
        saved = saver.get_tuple({"configurable": {"thread_id": thread}})
    if saved is None:
        return set()
    proposals = list(saved.checkpoint["channel_values"].get("proposals") or [])
    for _task, channel, value in saved.pending_writes or []:
        if channel == "proposals" and isinstance(value, list):
            proposals += value
    return {p["model"] for p in proposals if isinstance(p, dict) and p["status"] == "answered"}


def trial(number: int, url: str) -> dict[str, Any]:
    phase = PHASES[number % len(PHASES)]
    thread = f"trial-{number}"
    with ServerProcess(scripts(number)) as server:
        settings = {"url": url, "base_url": server.base_url, "thread": thread}
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.crash_resume", "--worker",
                                    json.dumps(settings)])  # fmt: skip
        rng = random.Random(number)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the phase is under way...
            records = [r for r in server.requests() if r.model in _phase_models(phase)]
            if records and any(r.outcome == "pending" for r in records):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))  # ...and a seeded moment into it
        killed_running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        before = server.requests()
        saved = saved_models(url, thread)
        with checkpointer(url) as saver:
            result = build(server.base_url, saver).invoke(
                None, {"configurable": {"thread_id": thread}}
            )
        after = server.requests()[len(before) :]
    answered = {r.model for r in before if r.outcome == "stop"}
    in_flight = {r.model for r in before} - answered  # cut off by the kill
    again = Counter(r.model for r in after)
    return {
        "phase": phase,
        "killed_running": killed_running,
        "finished": result["messages"][-1].text == FINAL,
        "saved_answers_called_again": sum(again[m] for m in saved),
        "in_flight_at_kill": len(in_flight),
        "in_flight_called_again": sum(again[m] for m in in_flight),
        "answered_unsaved_called_again": sum(again[m] for m in answered - saved),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    postgres = PostgresServer()
    try:
        url = postgres.start()
        trials = [trial(number, url) for number in range(args.trials)]
    finally:
        postgres.stop()
    report = {
        "trials": len(trials),
        "killed_while_running": sum(t["killed_running"] for t in trials),
        "finished_by_another_process": sum(t["finished"] for t in trials),
        "saved_answers_called_again": sum(t["saved_answers_called_again"] for t in trials),
        "in_flight_at_kill": sum(t["in_flight_at_kill"] for t in trials),
        "in_flight_called_again": sum(t["in_flight_called_again"] for t in trials),
        "answered_unsaved_called_again": sum(t["answered_unsaved_called_again"] for t in trials),
        "killed_in": dict(Counter(t["phase"] for t in trials)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
