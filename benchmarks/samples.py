"""Self-MoA with the vote on one embedded model: its samples in one request, against apart.

Side by side in one run, each the median of ``--runs`` runs (a different seed each run, the same
for every variant):

- ``one answer``: the model answering alone (``ChatLocalModel.invoke``);
- ``llama.cpp alone``: the same request made to the loaded llama.cpp server directly, the
  speed the engine itself reaches (the chat model must keep up with it);
- ``vote, one request``: Self-MoA with ``samples`` samples and ``aggregation="vote"``, the
  samples drawn in one request (``n``), as the embedded models do by default;
- ``vote, apart``: the same mixture with one request a sample
  (``samples_in_one_request=False``), as before the engine drew samples together.

Reported: wall seconds, output tokens per second (all samples' tokens, for a vote), and each
vote's wall time over one answer's.

Run: ``python -m benchmarks.samples`` (part of ``make bench``); ``--model``, ``--samples``,
``--runs``, ``--tokens``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from langchain_core.messages import HumanMessage

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.local import ChatLocalModel

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May? End with 'The answer is N'."
)


def _vote(model: ChatLocalModel, samples: int, together: bool, seed: int) -> ChatMixtureOfAgents:
    spec = ProposerSpec(model=model, samples=samples, samples_in_one_request=together)
    return ChatMixtureOfAgents(proposers=[spec], aggregator=model, layers=2, seed=seed,
                               aggregation="vote", answer_extractor="number")  # fmt: skip


def _timed(run: Callable[[], int]) -> dict[str, float]:
    """Wall seconds of ``run`` and the output tokens a second it reports."""
    started = time.perf_counter()
    tokens = run()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens_per_s": tokens / wall if tokens else 0.0}


def measure(model_name: str, samples: int, runs: int, tokens: int) -> dict[str, Any]:
    model = ChatLocalModel(model=model_name, temperature=0.7, max_tokens=tokens)
    model.invoke("Hi")  # loaded and warm before timing
    engine = model._engine()

    def one_answer(seed: int) -> int:
        usage = model.invoke(QUESTION, seed=seed).usage_metadata
        return usage["output_tokens"] if usage else 0

    def llama_cpp_alone(seed: int) -> int:
        request = model._request([HumanMessage(QUESTION)], None, {"seed": seed}, stream=False)
        return int(engine.server.handle_chat_completions(request)["usage"]["completion_tokens"])

    def vote(together: bool) -> Callable[[int], int]:
        def run(seed: int) -> int:
            usage = _vote(model, samples, together, seed).invoke(QUESTION).usage_metadata
            return usage["output_tokens"] if usage else 0

        return run

    variants: dict[str, Callable[[int], int]] = {
        "one answer": one_answer,
        "llama.cpp alone": llama_cpp_alone,
        "vote, one request": vote(True),
        "vote, apart": vote(False),
    }
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for seed in range(runs):  # the variants take turns within each round
        for name, variant in variants.items():
            rows[name].append(_timed(partial(variant, seed)))
    report: dict[str, Any] = {"model": model_name, "samples": samples, "runs": runs}
    for name, samples_of in rows.items():
        report[name] = {key: round(statistics.median(s[key] for s in samples_of), 2)
                        for key in ("wall_s", "tokens_per_s")}  # fmt: skip
    one = report["one answer"]["wall_s"]
    for name in ("vote, one request", "vote, apart"):
        report[name]["x_one_answer"] = round(report[name]["wall_s"] / one, 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=320)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.samples, args.runs, args.tokens), indent=2))


if __name__ == "__main__":
    main()
