"""Sharded experiments: N processes sharing one PostgreSQL store against one process.

One process runs ``moa-graph eval`` over ``--items`` items (a 3-proposer mixture and the
proposer alone, against the scripted loopback server, 50 ms a call); then ``--shards``
processes run the same command at once, each with ``--shard I/N`` and one shared ``--store``,
and ``--report-only`` over the store writes the whole experiment's summary. The work is I/O on
the loopback server, so it splits across processes even on two cores.

Reported: each side's wall time and their ratio; model calls made by each side (duplicated
calls across shards show as more calls); whether the two summaries agree (accuracy, paired
tests and calls per item of every system).

Run: ``python -m benchmarks.sharded_eval`` (part of ``make bench``); ``--items``, ``--shards``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moa_graph.testing import ModelScript, PostgresServer, ServerProcess

PROPOSERS, AGGREGATOR = ("p1", "p2", "p3"), "agg"
RECIPE = """aggregator = "openai:agg"
layers = 2
proposers = ["openai:p1", "openai:p2", "openai:p3"]
"""


def _dataset(folder: Path, items: int) -> Path:
    path = folder / "sums.jsonl"
    lines = [json.dumps({"id": f"s{i}", "question": f"What is {i} + 2?", "answer": str(i + 2)})
             for i in range(items)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _command(dataset: Path, recipe: Path, items: int, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "moa-graph"), "eval", "--dataset", f"jsonl:{dataset}",
            "--limit", str(items), "--systems", "single:openai:p1", f"moa:{recipe}",
            "--out", str(out), "--no-plot", "--quiet"]  # fmt: skip


def _summary(folder: Path) -> list[dict[str, Any]]:
    rows = json.loads((folder / "summary.json").read_text())
    return [{key: row[key] for key in ("system", "items", "metrics", "paired", "calls")}
            for row in rows]  # fmt: skip


def _run_all(commands: list[list[str]], env: dict[str, str]) -> float:
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for command in commands
    ]
    if any(process.wait() for process in processes):
        raise RuntimeError("an eval process failed")
    return time.perf_counter() - started


def measure(items: int, shards: int) -> dict[str, Any]:
    scripts = {name: ModelScript(reply="The answer is 7.", ttft=0.05, per_token=0.0, jitter=0.0)
               for name in (*PROPOSERS, AGGREGATOR)}  # fmt: skip
    postgres = PostgresServer()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(scripts) as server:
        folder = Path(tmp)
        dataset, recipe = _dataset(folder, items), folder / "moa.toml"
        recipe.write_text(RECIPE)
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-bench"}
        try:
            store = postgres.start()
            one = _run_all([_command(dataset, recipe, items, folder / "one")], env)
            calls_one = len(server.requests())
            server.reset()
            sharded = [[*_command(dataset, recipe, items, folder / "sharded"), "--store", store,
                        "--shard", f"{i}/{shards}"] for i in range(1, shards + 1)]  # fmt: skip
            many = _run_all(sharded, env)
            calls_many = len(server.requests())
            _run_all([[*_command(dataset, recipe, items, folder / "sharded"), "--store", store,
                       "--report-only"]], env)  # fmt: skip
        finally:
            postgres.stop()
        same = _summary(folder / "one") == _summary(folder / "sharded")
    return {
        "items": items,
        "shards": shards,
        "wall_s_one_process": round(one, 2),
        "wall_s_sharded": round(many, 2),
        "sharded_over_one": round(many / one, 3),
        "model_calls_one_process": calls_one,
        "model_calls_sharded": calls_many,
        "duplicated_calls": calls_many - calls_one,
        "same_summary": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(measure(args.items, args.shards), indent=2))


if __name__ == "__main__":
    main()
