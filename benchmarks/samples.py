"""Self-MoA with the vote on one embedded model: its samples in one request, against apart.

Side by side in one run, over the first ``--questions`` GSM8K questions of the experiment (its
seed-0 draw, its prompt), each asked ``--runs`` times (a different seed each run, the same for
every variant):

- ``one answer``: the model answering alone (``ChatLocalModel.invoke``);
- ``llama.cpp alone``: the same request made to the loaded llama.cpp server directly, the
  speed the engine itself reaches (the chat model must keep up with it);
- ``vote, one request``: Self-MoA with ``samples`` samples and ``aggregation="vote"``, the
  samples drawn in one request (``n``), as the embedded models do by default;
- ``vote, apart``: the same mixture with one request a sample
  (``samples_in_one_request=False``), as before the engine drew samples together.

Every request reads its prompt whole (``ChatLocalModel(cache_prompt=False)``): otherwise each
variant would find the prompt the variant before it had read, and the later ones would seem
faster (llama.cpp after the chat model, on the same question, read one prompt token).

Reported: each variant's wall seconds summed over the questions and runs, its output tokens per
second (all samples' tokens, for a vote), and each vote's wall time over one answer's, the ratio
of the sums. One question is not enough: a vote lasts as long as its longest sample, and how
much longer that is than one answer varies from question to question (one question alone gave
ratios from 3.8 to 4.4 here, and samples of equal length 3.25).

Then the ceiling two cores set (``equal lengths``): the same llama.cpp server asked directly for
one answer and for ``samples`` answers in one request, every answer forced to ``--tokens``
tokens (``ignore_eos``), so that no sample is longer than another: the ratio a vote would reach
if its samples were as long as one answer.

Run: ``python -m benchmarks.samples`` (part of ``make bench``); ``--model``, ``--samples``,
``--questions``, ``--runs``, ``--tokens``; ``--ceiling-only`` measures only the ceiling.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from langchain_core.messages import HumanMessage

from moa_graph import ChatMixtureOfAgents, ProposerSpec
from moa_graph.evaluation.datasets import load_gsm8k
from moa_graph.local import ChatLocalModel


def questions(count: int) -> list[str]:
    """The prompts of the experiment's first ``count`` GSM8K items (seed 0, as ``eval`` draws)."""
    return [item.turns[0] for item in load_gsm8k().subset(count, seed=0).items[:count]]


def _vote(model: ChatLocalModel, samples: int, together: bool, seed: int) -> ChatMixtureOfAgents:
    spec = ProposerSpec(model=model, samples=samples, samples_in_one_request=together)
    return ChatMixtureOfAgents(proposers=[spec], aggregator=model, layers=2, seed=seed,
                               aggregation="vote", answer_extractor="number")  # fmt: skip


def _timed(run: Callable[[], int]) -> tuple[float, int]:
    """Wall seconds of ``run`` and the output tokens it reports."""
    started = time.perf_counter()
    tokens = run()
    return time.perf_counter() - started, tokens


def measure(
    model_name: str, samples: int, prompts: list[str], runs: int, tokens: int
) -> dict[str, Any]:
    model = ChatLocalModel(model=model_name, temperature=0.7, max_tokens=tokens,
                           cache_prompt=False)  # fmt: skip
    model.invoke("Hi")  # loaded and warm before timing
    engine = model._engine()

    def one_answer(question: str, seed: int) -> int:
        usage = model.invoke(question, seed=seed).usage_metadata
        return usage["output_tokens"] if usage else 0

    def llama_cpp_alone(question: str, seed: int) -> int:
        request = model._request([HumanMessage(question)], None, {"seed": seed}, stream=False)
        return int(engine.server.handle_chat_completions(request)["usage"]["completion_tokens"])

    def vote(together: bool) -> Callable[[str, int], int]:
        def run(question: str, seed: int) -> int:
            usage = _vote(model, samples, together, seed).invoke(question).usage_metadata
            return usage["output_tokens"] if usage else 0

        return run

    variants: dict[str, Callable[[str, int], int]] = {
        "one answer": one_answer,
        "llama.cpp alone": llama_cpp_alone,
        "vote, one request": vote(True),
        "vote, apart": vote(False),
    }
    walls = dict.fromkeys(variants, 0.0)
    output_tokens = dict.fromkeys(variants, 0)
    for seed in range(runs):
        for question in prompts:  # the variants take turns on each question
            for name, variant in variants.items():
                wall, made = _timed(partial(variant, question, seed))
                walls[name] += wall
                output_tokens[name] += made
    report: dict[str, Any] = {"model": model_name, "samples": samples,
                              "questions": len(prompts), "runs": runs}  # fmt: skip
    for name, wall in walls.items():
        report[name] = {"wall_s": round(wall, 1),
                        "tokens_per_s": round(output_tokens[name] / wall, 2)}  # fmt: skip
    one = walls["one answer"]
    for name in ("vote, one request", "vote, apart"):
        report[name]["x_one_answer"] = round(walls[name] / one, 2)
    return report


def batch_ceiling(model_name: str, samples: int, prompt: str, tokens: int) -> dict[str, Any]:
    """One answer against ``samples`` answers in one request, all exactly ``tokens`` long."""
    model = ChatLocalModel(model=model_name, temperature=0.7, max_tokens=tokens, seed=0,
                           cache_prompt=False)  # fmt: skip
    model.invoke("Hi")  # loaded and warm before timing
    server = model._engine().server

    def forced(n: int) -> int:
        request = model._request([HumanMessage(prompt)], None, {"n": n}, stream=False)
        request["ignore_eos"] = True
        usage = server.handle_chat_completions(request)["usage"]
        return n * int(usage["completion_tokens"])  # llama.cpp counts one answer of n

    one_wall, one_tokens = _timed(partial(forced, 1))
    batch_wall, batch_tokens = _timed(partial(forced, samples))
    return {"tokens": tokens, "one answer tokens_per_s": round(one_tokens / one_wall, 1),
            f"{samples} in one request tokens_per_s": round(batch_tokens / batch_wall, 1),
            "x_one_answer": round(batch_wall / one_wall, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=320)
    parser.add_argument("--ceiling-only", action="store_true")
    args = parser.parse_args()
    prompts = questions(args.questions)
    report: dict[str, Any] = {}
    if not args.ceiling_only:
        report = measure(args.model, args.samples, prompts, args.runs, args.tokens)
    report["equal lengths"] = batch_ceiling(args.model, args.samples, prompts[0], args.tokens)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
