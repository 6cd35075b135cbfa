"""Load time, memory and generation speed of each embedded model on this machine.

For each model: seconds to load, resident memory added by loading it, tokens per second while
streaming a fixed 128-token answer (after one warm-up call; the median of ``--runs`` streams,
since a shared machine's speed wanders from one answer to the next), and prompt tokens read per
second (a prompt of 160 made-up words, new each run so the prompt cache cannot serve it; the
speed is the prompt's tokens, as the model counted them, over the call's wall time). Each
model is measured in a process of its own, one after another, so each figure is the model's own.

Then, in one more process, every model is loaded first and each is streamed again
(``tokens_per_s_all_loaded``), as a mixture of them runs. The two speeds should match: before
``moa_graph.local`` set its OpenMP defaults, llama.cpp's threads slept at every barrier once
several models were loaded, and each model streamed about a third slower than alone.

Run: ``python -m benchmarks.local_models`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from moa_graph.local import create_local_chat_model
from moa_graph.local.weights import MODELS

PROMPT = "Write a short story about a lighthouse keeper."


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _streamed_tokens_per_second(model: Any) -> tuple[int, float]:
    started = time.perf_counter()
    produced = 0
    for chunk in model.stream(PROMPT):
        usage = getattr(chunk, "usage_metadata", None)
        if usage:
            produced = usage["output_tokens"]
    return produced, produced / (time.perf_counter() - started)


def _median_speed(model: Any, runs: int) -> tuple[int, float]:
    """The output tokens of one stream and the median tokens a second of ``runs`` streams."""
    streams = [_streamed_tokens_per_second(model) for _ in range(runs)]
    return streams[0][0], round(statistics.median(speed for _, speed in streams), 1)


def _reading_speed(name: str, runs: int) -> float:
    """The median prompt tokens read a second, over ``runs`` prompts new to the model."""
    model = _greedy(name, 1)
    speeds = []
    for run in range(runs):
        prompt = f"Run {run}. Count the words: " + " ".join(f"w{run}x{i}" for i in range(160))
        started = time.perf_counter()
        message = model.invoke(prompt)
        read = message.usage_metadata["input_tokens"] if message.usage_metadata else 0
        speeds.append(read / (time.perf_counter() - started))
    return round(statistics.median(speeds), 1)


def _greedy(name: str, tokens: int) -> Any:
    return create_local_chat_model(name, temperature=0.0, max_tokens=tokens, seed=0)


def measure(name: str, tokens: int, runs: int) -> dict[str, Any]:
    model = _greedy(name, tokens)
    before = _rss_mb()
    started = time.perf_counter()
    model.preload()
    load_s = time.perf_counter() - started
    loaded = _rss_mb()
    model.invoke("Hi")  # warm-up
    output_tokens, tokens_per_s = _median_speed(model, runs)
    return {
        "model": name,
        "load_s": round(load_s, 2),
        "rss_added_mb": round(loaded - before),
        "output_tokens": output_tokens,
        "tokens_per_s": tokens_per_s,
        "prompt_tokens_per_s": _reading_speed(name, runs),
    }


def measure_all_loaded(names: list[str], tokens: int, runs: int) -> dict[str, float]:
    """Each model's streaming speed with all of ``names`` loaded in this process."""
    models = {name: _greedy(name, tokens) for name in names}
    for model in models.values():
        model.invoke("Hi")  # loaded and warm
    return {name: _median_speed(model, runs)[1] for name, model in models.items()}


def _in_new_process(function: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    results = [_in_new_process(measure, name, args.tokens, args.runs) for name in args.models]
    together = _in_new_process(measure_all_loaded, args.models, args.tokens, args.runs)
    for result in results:
        result["tokens_per_s_all_loaded"] = together[result["model"]]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
