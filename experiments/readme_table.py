"""Print the README's results table for one experiment folder, from its ``summary.json``.

Usage: .venv/bin/python experiments/readme_table.py experiments/gsm8k-local

Then, when the run asked for pairs (``--pair``), the table of those paired tests.

Every figure comes from the summary that ``moa-graph eval`` (or ``--report-only``) wrote:
accuracy with its Wilson interval, calls and model seconds per item, and the paired test against
the most accurate single model (difference in points with its interval, wins / losses, McNemar p).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from moa_graph.evaluation.report import Estimate, format_difference
from moa_graph.evaluation.scoring import McNemar

LABELS = {
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B alone",
    "qwen2.5-coder-1.5b-greedy": "Qwen2.5-Coder-1.5B alone, greedy",
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B alone",
    "smollm2-135m": "SmolLM2-135M alone",
    "moa-local": "MoA `local` (1.5B, 0.5B, 135M -> 1.5B, synthesize)",
    "self-moa-synthesize": "Self-MoA 1.5B x3, synthesize",
    "self-moa-synthesize-votes": "Self-MoA 1.5B x3, synthesize with vote counts",
    "self-moa-early-exit": "Self-MoA 1.5B x3, synthesize, early exit",
    "self-moa-rank": "Self-MoA 1.5B x3, rank (LLM-ranker)",
    "self-moa-vote": "Self-MoA 1.5B x3, vote",
    "self-moa-vote-5": "Self-MoA 1.5B x5, vote",
    "self-moa-weighted-vote-5": "Self-MoA 1.5B x5, confidence-weighted vote (CISC)",
    "moa-local-staircase": "MoA `local`, synthesize, staircase 8",
    "self-moa-staircase": "Self-MoA 1.5B x3, synthesize, staircase 8",
    **{f"moa-local-staircase-{n}": f"MoA `local`, synthesize, staircase {n}" for n in (16, 32, 64)},
    "moa-local-staircase-g8": "MoA `local`, synthesize, staircase 8 growing eightfold",
}
"""README names of the systems of ``experiments/run_local.sh`` and ``run_samples.sh`` (others
keep their own name)."""


def _accuracy(row: dict[str, Any]) -> str:
    return Estimate(**row["metrics"]["accuracy"]).format(100.0)


def _seconds(row: dict[str, Any], timed_items: int) -> str:
    if row["model_s"] is None:
        return "n/a"
    seconds = f"{row['model_s']:.0f}"
    return seconds if row["model_s_items"] == timed_items else f"{seconds} ({row['model_s_items']})"


def _paired(row: dict[str, Any], key: str = "paired") -> str:
    if row.get(key) is None:
        return ""
    test = McNemar(**row[key])
    return f"{format_difference(test)}; {test.only_a} / {test.only_b}, p = {test.p_value:.2g}"


def readme_table(folder: Path) -> str:
    """The Markdown table of the systems in ``folder/summary.json``, in the summary's order
    (a system whose model seconds cover another number of items than most says how many)."""
    rows = json.loads((folder / "summary.json").read_text())
    baseline = next((row["paired_with"] for row in rows if row["paired_with"]), "the baseline")
    timed_items = Counter(row["model_s_items"] for row in rows).most_common(1)[0][0]
    lines = [
        f"| system | accuracy % [95% CI] | calls | model s ({timed_items} items) "
        f"| vs {LABELS.get(baseline, baseline)}: points [95% CI]; wins / losses, McNemar p |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (LABELS.get(row["system"], row["system"]), _accuracy(row), f"{row['calls']:.1f}",
                 _seconds(row, timed_items), _paired(row))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_table(folder: Path) -> str:
    """The Markdown table of the pairs ``--pair`` asked for (empty when there are none)."""
    rows = [row for row in json.loads((folder / "summary.json").read_text())
            if row.get("compared") is not None]  # fmt: skip
    if not rows:
        return ""
    lines = ["| system | against | points [95% CI]; wins / losses, McNemar p |", "|---|---|---|"]
    for row in rows:
        name, other = (LABELS.get(n, n) for n in (row["system"], row["compared_with"]))
        lines.append(f"| {name} | {other} | {_paired(row, 'compared')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_table(Path(sys.argv[1])))
    if pairs := pairs_table(Path(sys.argv[1])):
        print(f"\n{pairs}")
