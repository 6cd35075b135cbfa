"""Load time, memory and generation speed of each embedded model on this machine.

For each model: seconds to load, resident memory added by loading it, and tokens per second
while streaming a fixed 128-token answer (after one warm-up call). Models are measured one after
another in one process, so each figure is the model's own.

Run: ``python -m benchmarks.local_models`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

from moa_graph.local import create_local_chat_model
from moa_graph.local.weights import MODELS

PROMPT = "Write a short story about a lighthouse keeper."


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(name: str, tokens: int) -> dict[str, Any]:
    model = create_local_chat_model(name, temperature=0.0, max_tokens=tokens, seed=0)
    before = _rss_mb()
    started = time.perf_counter()
    model.preload()
    load_s = time.perf_counter() - started
    loaded = _rss_mb()
    model.invoke("Hi")  # warm-up
    started = time.perf_counter()
    produced = 0
    for chunk in model.stream(PROMPT):
        usage = getattr(chunk, "usage_metadata", None)
        if usage:
            produced = usage["output_tokens"]
    elapsed = time.perf_counter() - started
    return {
        "model": name,
        "load_s": round(load_s, 2),
        "rss_added_mb": round(loaded - before),
        "output_tokens": produced,
        "tokens_per_s": round(produced / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    print(json.dumps([measure(name, args.tokens) for name in args.models], indent=2))


if __name__ == "__main__":
    main()
